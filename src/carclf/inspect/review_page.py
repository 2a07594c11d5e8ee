"""The label doctor's review page: plain HTML and a little JavaScript, served by
:mod:`carclf.inspect.review` (it fetches ``/api/items`` and posts each decision at once)."""

from __future__ import annotations

from carclf import html as H

CSS = """
.issue{display:flex;gap:1.2em;align-items:flex-start;border:2px solid #ddd;border-radius:6px;
padding:.5em;margin:.6em 0}
.issue.current{border-color:#2a6edb;box-shadow:0 0 0 3px #d6e4fb}
.issue.keep{background:#eef8ee}.issue.relabel{background:#fff8e6}.issue.exclude{background:#fdecec}
.issue .main img{height:170px}.issue .side img{height:80px}
.side{max-width:30em}.actions{margin-top:.5em}.actions button{margin-right:.3em;font-size:1em}
.status{font-weight:bold;margin-left:.5em}
kbd{border:1px solid #bbb;border-radius:3px;padding:0 .3em;background:#f7f7f7;font-size:.85em}
#bar{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}
#error{color:#d33}
"""

SCRIPT = r"""
const state = {items: [], current: 0};
const $ = (s, el = document) => el.querySelector(s);
function figure(src, caption) {
  const f = document.createElement('figure');
  const img = document.createElement('img');
  img.src = src; img.alt = caption; img.loading = 'lazy';
  const c = document.createElement('figcaption'); c.textContent = caption;
  f.append(img, c); return f;
}
function examples(title, list) {
  const d = document.createElement('div'); d.className = 'side';
  const b = document.createElement('b'); b.textContent = title; d.append(b, document.createElement('br'));
  for (const e of list) d.append(figure(e.src, e.name));
  return d;
}
function card(item, i) {
  const s = document.createElement('section');
  s.className = 'issue'; s.dataset.testid = 'issue'; s.dataset.path = item.path; s.tabIndex = 0;
  const main = document.createElement('div'); main.className = 'main';
  main.append(figure(item.src, `#${item.rank} ${item.name} · p(given) ${item.score.toFixed(4)}`));
  const acts = document.createElement('div'); acts.className = 'actions';
  const sel = document.createElement('select'); sel.dataset.testid = 'relabel-to';
  for (const [value, name] of window.CLASSES) sel.add(new Option(`${name} (${value})`, value));
  sel.value = item.decision && item.decision.decision === 'relabel' ? item.decision.label : item.suggested_label;
  for (const [what, key] of [['keep', 'k'], ['relabel', 'r'], ['exclude', 'x']]) {
    const b = document.createElement('button'); b.dataset.testid = what;
    b.innerHTML = `${what} <kbd>${key}</kbd>`;
    b.onclick = () => decide(i, what); acts.append(b);
  }
  const st = document.createElement('span'); st.className = 'status'; st.dataset.testid = 'status';
  acts.append(document.createElement('br'), 'relabel to ', sel, st);
  main.append(acts);
  s.append(main, examples(`given: ${item.given_name}`, item.given_examples),
           examples(`suggested: ${item.suggested_name} (p = ${item.suggested_prob.toFixed(2)})`,
                    item.suggested_examples));
  s.onclick = () => focusCard(i, false);
  return s;
}
function show(i) {
  const item = state.items[i], el = document.querySelectorAll('.issue')[i];
  el.classList.remove('keep', 'relabel', 'exclude');
  const d = item.decision;
  if (d) { el.classList.add(d.decision); $('.status', el).textContent = d.decision === 'relabel' ? `saved: relabel to ${d.name}` : `saved: ${d.decision}`; }
  const done = state.items.filter(x => x.decision).length;
  $('#progress').textContent = `${done} of ${state.items.length} reviewed`;
}
function focusCard(i, scroll = true) {
  const cards = document.querySelectorAll('.issue');
  if (!cards.length) return;
  state.current = Math.max(0, Math.min(i, cards.length - 1));
  cards.forEach((c, k) => c.classList.toggle('current', k === state.current));
  if (scroll) cards[state.current].scrollIntoView({block: 'center'});
}
async function decide(i, decision) {
  const item = state.items[i], el = document.querySelectorAll('.issue')[i];
  const body = {path: item.path, decision};
  if (decision === 'relabel') body.label = $('[data-testid=relabel-to]', el).value;
  $('.status', el).textContent = 'saving...';
  try {
    const r = await fetch('api/decisions', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    const j = await r.json();
    if (!r.ok) throw new Error(j.detail || r.statusText);
    item.decision = j.decision; show(i); $('#error').textContent = '';
    const next = state.items.findIndex((x, k) => k > i && !x.decision);
    focusCard(next >= 0 ? next : i);
  } catch (e) { $('.status', el).textContent = ''; $('#error').textContent = `not saved: ${e.message}`; }
}
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'SELECT' || e.ctrlKey || e.metaKey || e.altKey) return;
  const acts = {k: 'keep', r: 'relabel', x: 'exclude'};
  if (acts[e.key]) { decide(state.current, acts[e.key]); e.preventDefault(); }
  else if (['j', 'n', 'ArrowDown'].includes(e.key)) { focusCard(state.current + 1); e.preventDefault(); }
  else if (['p', 'ArrowUp'].includes(e.key)) { focusCard(state.current - 1); e.preventDefault(); }
});
fetch('api/items').then(r => r.json()).then(j => {
  state.items = j.items; window.CLASSES = j.classes;
  const list = $('#issues');
  state.items.forEach((item, i) => list.append(card(item, i)));
  state.items.forEach((_, i) => show(i));
  const first = state.items.findIndex(x => !x.decision);
  focusCard(first >= 0 ? first : 0, false);
  document.body.dataset.ready = 'true';
});
"""


def review_html(title: str, subtitle: str, decisions_file: str, flagged: int) -> str:
    """The page shell; the flagged photos arrive from ``/api/items``."""
    help_ = (
        f"<p>{flagged} flagged photos, most suspicious first. For each, decide: <b>keep</b> the "
        "label (a hard photo, not an error), <b>relabel</b> it (to the suggested class, or "
        "another one chosen in the list), or <b>exclude</b> the photo from training. Keys: "
        "<kbd>k</kbd> keep, <kbd>r</kbd> relabel, <kbd>x</kbd> exclude, <kbd>j</kbd>/<kbd>↓</kbd> "
        "next, <kbd>p</kbd>/<kbd>↑</kbd> previous. Each decision is saved at once to "
        f"<code>{H.esc(decisions_file)}</code> (closing the page loses nothing); train with "
        f"<code>data.relabel={H.esc(decisions_file)} data.exclude={H.esc(decisions_file)}</code>."
        "</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{H.esc(title)}</title>
<style>{H.CSS}{CSS}</style></head>
<body>
<h1>{H.esc(title)}</h1>
<p class="sub">{H.esc(subtitle)}</p>
{help_}
<div id="bar"><span id="progress" data-testid="progress"></span>
<a href="decisions.csv">decisions.csv</a> <span id="error" data-testid="error"></span></div>
<div id="issues"></div>
<script>{SCRIPT}</script>
</body></html>
"""
