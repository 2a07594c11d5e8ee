// The carclf page: choose or drop a photo, show it, ask POST /predict, draw the top 5.
// Server data is only ever inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};
let limits = null;
let previewUrl = null;

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`;
}

async function loadModel() {
  try {
    const r = await fetch("/ready");
    const body = await r.json();
    if (!r.ok) {
      $("model-text").textContent = body.detail || "model not ready";
      $("model").classList.add("waiting");
      setTimeout(loadModel, 1500);
      return;
    }
    const m = body.model;
    limits = body.limits;
    $("model").classList.remove("waiting");
    $("model").classList.add("ready");
    $("model-text").textContent = `${m.name} · ${m.backbone} · ${m.num_classes} classes · ${m.backend}`;
    $("model").title = `version ${m.version}`;
    $("formats").textContent =
      `${limits.accepted_formats.join(", ")} · up to ${formatBytes(limits.max_upload_bytes)}`;
    $("version").textContent = `model version ${m.version}`;
  } catch (e) {
    $("model-text").textContent = "service unreachable";
    setTimeout(loadModel, 3000);
  }
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const img = $("preview");
  img.onload = () => {
    $("file-meta").textContent =
      `${file.name || "pasted image"} · ${img.naturalWidth}×${img.naturalHeight} · ${formatBytes(file.size)}`;
  };
  img.onerror = () => {
    $("file-meta").textContent = `${file.name || "file"} · ${formatBytes(file.size)} · no preview`;
  };
  img.src = previewUrl;
  img.hidden = false;
  $("again").hidden = false;
  $("dropzone").classList.add("has-image");
}

function setBusy(busy) {
  $("spinner").hidden = !busy;
  $("placeholder").hidden = true;
  $("dropzone").classList.toggle("busy", busy);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function render(body, roundTripMs) {
  const list = $("results");
  list.replaceChildren();
  body.top.forEach((c) => {
    const pct = c.probability * 100;
    const item = el("li", c.rank === 1 ? "result top1" : "result");
    item.dataset.testid = "result-item";
    const head = el("div", "result-head");
    const names = el("div", "names");
    const name = el("span", "name", c.name);
    if (c.rank === 1) name.dataset.testid = "top1-name";
    names.append(name);
    if (c.name_local && c.name_local !== c.name) names.append(el("span", "local", c.name_local));
    head.append(el("span", "rank", String(c.rank)), names, el("span", "pct", `${pct.toFixed(1)}%`));
    const bar = el("div", "bar");
    const fill = el("div", "fill");
    fill.style.width = `${Math.max(0.5, pct).toFixed(1)}%`;
    bar.append(fill);
    item.append(head, bar);
    list.append(item);
  });
  $("latency").textContent =
    `${body.latency_ms.toFixed(0)} ms on the server · ${roundTripMs.toFixed(0)} ms round trip`;
}

async function predict(file) {
  $("error").hidden = true;
  $("results").replaceChildren();
  $("latency").textContent = "";
  if (limits && file.size > limits.max_upload_bytes) {
    showError(`This file is ${formatBytes(file.size)}; the limit is ${formatBytes(limits.max_upload_bytes)}.`);
    return;
  }
  setBusy(true);
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  const t0 = performance.now();
  try {
    const r = await fetch("/predict?top_k=5", { method: "POST", body: form });
    const roundTrip = performance.now() - t0;
    let body;
    try {
      body = await r.json();
    } catch (e) {
      throw new Error(`the server answered ${r.status} without a JSON body`);
    }
    if (!r.ok) {
      showError(body.detail || body.error || `error ${r.status}`);
      return;
    }
    render(body, roundTrip);
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

function handle(file) {
  if (!file) return;
  showPreview(file);
  predict(file);
}

function init() {
  const zone = $("dropzone");
  $("file").addEventListener("change", (e) => {
    handle(e.target.files[0]);
    e.target.value = ""; // choosing the same file again still fires "change"
  });
  $("again").addEventListener("click", () => $("file").click());
  ["dragenter", "dragover"].forEach((t) =>
    zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((t) =>
    zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (e) => handle(e.dataTransfer.files[0]));
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) handle(item.getAsFile());
  });
  loadModel();
}

init();
