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
let knownModels = null; // how many classes the model knows (the "unknown" banner says it)
let previewUrl = null;
let explainable = false; // the model has PyTorch weights: POST /explain works (from /ready)
let currentFile = null; // the photo on the page, for "explain"

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
    explainable = body.explain === true;
    knownModels = m.num_classes;
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
  resetExplain();
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

function renderVerdict(body) {
  // Only a model with open-set data answers "unknown"; older models leave it out.
  const box = $("unknown");
  const unknown = body.unknown === true;
  box.hidden = !unknown;
  $("results-title").textContent = unknown ? "Closest guesses" : "Top 5 car models";
  if (!unknown) return;
  const n = knownModels ?? body.model?.num_classes;
  box.replaceChildren(
    el("strong", null, `Not one of the ${n} known models`),
    el("span", "reason", "This photo does not look like any car model the classifier was trained on; the closest guesses are below."),
  );
  box.title = body.reason || "";
}

function render(body, roundTripMs) {
  renderVerdict(body);
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
  $("unknown").hidden = true;
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
    offerExplain();
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

// -- explain: the Grad-CAM heat map of the answer, over the photo, with a toggle -------------
function resetExplain() {
  $("explain-row").hidden = true;
  $("heatmap").hidden = true;
  $("heatmap").removeAttribute("src");
  $("heatmap-switch").hidden = true;
  $("explain-note").textContent = "";
  $("explain-note").classList.remove("bad");
  $("explain").disabled = false;
}

function offerExplain() {
  $("explain-row").hidden = false;
  $("explain").disabled = !explainable;
  $("explain").title = explainable ? "" : "this service's model has no PyTorch weights (ONNX only)";
}

function showHeatmap(on) {
  const ready = Boolean($("heatmap").getAttribute("src"));
  $("heatmap").hidden = !(on && ready);
  $("preview").hidden = on && ready;
}

async function explain() {
  if (!currentFile) return;
  const note = $("explain-note");
  note.classList.remove("bad");
  note.textContent = "Explaining…";
  $("explain").disabled = true;
  const form = new FormData();
  form.append("file", currentFile, currentFile.name || "upload");
  try {
    const r = await fetch("/explain", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) {
      note.classList.add("bad");
      note.textContent = body.detail || body.error || `error ${r.status}`;
      return;
    }
    const c = body.explained;
    $("heatmap").src = body.overlay;
    $("heatmap-switch").hidden = false;
    $("heatmap-toggle").checked = true;
    showHeatmap(true);
    note.textContent =
      `Grad-CAM for ${c.display} (${(c.probability * 100).toFixed(1)}%): red is where the evidence was strongest · ${body.latency_ms.toFixed(0)} ms`;
  } catch (e) {
    note.classList.add("bad");
    note.textContent = `Could not reach the service: ${e.message}`;
  } finally {
    $("explain").disabled = !explainable;
  }
}

function handle(file) {
  if (!file) return;
  currentFile = file;
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
  $("explain").addEventListener("click", explain);
  $("heatmap-toggle").addEventListener("change", (e) => showHeatmap(e.target.checked));
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
