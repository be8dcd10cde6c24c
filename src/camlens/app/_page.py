"""The page: one HTML document, its style sheet and its script, served as they are.

No framework, no web fonts, nothing fetched from another site: the page works offline and
the Content-Security-Policy of the server allows only these three files and its own API.
"""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>camlens: where does the model look?</title>
<link rel="stylesheet" href="/app.css">
</head>
<body data-busy="0">
<header>
  <h1>camlens <span>where does the model look?</span></h1>
  <p id="model-info">starting...</p>
</header>
<div id="message" role="alert" hidden></div>
<main>
<section id="controls" aria-label="what to explain">
  <fieldset>
    <legend>1. Photo</legend>
    <label id="drop" class="drop">
      <span>Drop photos here, or <u>choose files</u></span>
      <input id="upload" type="file" accept="image/*" multiple>
    </label>
    <div id="samples" class="samples"></div>
    <div id="photos" class="strip" aria-label="your photos"></div>
  </fieldset>
  <fieldset>
    <legend>2. Class</legend>
    <ol id="predictions" class="predictions"></ol>
    <form id="class-form" class="row">
      <input id="class-input" list="labels" placeholder="or type a class name"
             autocomplete="off" aria-label="class name">
      <button type="submit">Explain</button>
    </form>
    <datalist id="labels"></datalist>
    <label class="check"><input type="checkbox" id="counterfactual">
      counterfactual: what argues <em>against</em> the class</label>
  </fieldset>
  <fieldset>
    <legend>3. Methods</legend>
    <div id="methods" class="methods"></div>
    <label class="row">Layer
      <input id="layer" list="layers" value="auto" autocomplete="off" aria-label="layer">
    </label>
    <datalist id="layers"></datalist>
    <label class="check"><input type="checkbox" id="faithfulness" checked>
      faithfulness: deletion and insertion curves</label>
  </fieldset>
  <div class="run">
    <button id="run" class="primary" type="button">Explain</button>
    <button id="cancel" type="button" hidden>Stop</button>
    <p id="estimate" aria-live="polite"></p>
    <div id="progress" hidden>
      <progress id="progress-bar"></progress>
      <span id="progress-text" aria-live="polite"></span>
    </div>
  </div>
</section>
<section id="results" hidden aria-label="results">
  <h2 id="result-title"></h2>
  <p id="result-meta"></p>
  <div class="look">
    <label>opacity <input id="alpha" type="range" min="0" max="1" step="0.05" value="0.5">
      <output id="alpha-value">0.50</output></label>
    <label>colormap <select id="colormap"></select></label>
    <label class="check"><input type="checkbox" id="show-boxes" checked> boxes</label>
  </div>
  <img id="grid" class="grid" alt="comparison grid">
  <div id="cards" class="cards"></div>
  <section id="faith" hidden>
    <h3>Faithfulness</h3>
    <p class="hint">Deletion: pixels removed, most salient first; the probability should
      fall fast (lower area is better). Insertion: pixels put back into a blurred photo;
      it should rise fast (higher is better).</p>
    <div id="charts" class="charts"></div>
    <table id="auc"></table>
  </section>
  <p class="downloads">Download:
    <a id="download-zip" download>everything (.zip: maps .npy, overlays, grid)</a> ·
    <a id="download-grid" download>grid (.png)</a></p>
</section>
</main>
<script src="/app.js"></script>
</body>
</html>
"""

CSS = """
:root { --ink: #1d232b; --muted: #5b6571; --line: #d5dbe2; --accent: #1f6feb;
  --bad: #b42318; --bg: #f6f8fa; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
header { padding: 14px 24px 6px; }
h1 { margin: 0; font-size: 22px; }
h1 span { font-weight: 400; color: var(--muted); font-size: 16px; margin-left: 8px; }
#model-info { margin: 2px 0 0; color: var(--muted); font-size: 13px; }
main { display: grid; grid-template-columns: minmax(300px, 360px) 1fr; gap: 20px;
  padding: 10px 24px 40px; align-items: start; }
@media (max-width: 860px) { main { grid-template-columns: 1fr; } }
fieldset { border: 1px solid var(--line); border-radius: 8px; background: #fff;
  margin: 0 0 12px; padding: 10px 12px 12px; }
legend { font-weight: 600; padding: 0 4px; }
.drop { display: block; border: 2px dashed var(--line); border-radius: 8px; padding: 18px;
  text-align: center; cursor: pointer; color: var(--muted); }
.drop.over { border-color: var(--accent); background: #eef4ff; }
.drop input { display: block; margin: 8px auto 0; max-width: 100%; }
.samples { margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.samples span { color: var(--muted); font-size: 13px; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }
.strip button { padding: 0; border: 2px solid transparent; border-radius: 6px;
  background: none; cursor: pointer; }
.strip button[aria-pressed="true"] { border-color: var(--accent); }
.strip img { display: block; height: 56px; border-radius: 4px; }
button { font: inherit; border: 1px solid var(--line); border-radius: 6px; background: #fff;
  padding: 4px 10px; cursor: pointer; }
button:hover { border-color: var(--accent); }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff;
  font-weight: 600; padding: 8px 18px; }
button:disabled { opacity: .55; cursor: default; }
.predictions { list-style: none; margin: 0 0 8px; padding: 0; }
.predictions button { width: 100%; text-align: left; margin: 2px 0; position: relative;
  overflow: hidden; display: flex; justify-content: space-between; gap: 8px; }
.predictions button[aria-pressed="true"] { border-color: var(--accent); font-weight: 600; }
.predictions .bar { position: absolute; left: 0; top: 0; bottom: 0; background: #dbe7fb;
  z-index: 0; }
.predictions .name, .predictions .p { position: relative; z-index: 1; }
.row { display: flex; gap: 6px; align-items: center; margin: 6px 0; }
.row input { flex: 1; min-width: 0; font: inherit; padding: 4px 6px; border: 1px solid var(--line);
  border-radius: 6px; }
.check { display: block; margin: 6px 0 0; font-size: 14px; }
.methods h4 { margin: 6px 0 2px; font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); }
.methods label { display: flex; gap: 6px; align-items: baseline; font-size: 14px; }
.methods .cost { color: var(--muted); font-size: 12px; margin-left: auto; text-align: right; }
.methods label { flex-wrap: wrap; }
.methods label.off > span:first-of-type { color: var(--muted); text-decoration: line-through; }
.methods .why { flex-basis: 100%; color: var(--bad); font-size: 12px; margin: 0 0 4px 22px; }
.methods .why:empty { display: none; }
.run { position: sticky; top: 8px; }
#estimate { color: var(--muted); font-size: 13px; margin: 6px 0; min-height: 1.2em; }
#estimate.warn { color: var(--bad); }
#progress { display: flex; flex-direction: column; gap: 4px; font-size: 13px; }
#progress progress { width: 100%; }
#message { margin: 0 24px; padding: 10px 14px; border-radius: 8px; background: #fde8e6;
  color: var(--bad); border: 1px solid #f4b7b0; white-space: pre-wrap; }
#message.info { background: #eef4ff; color: var(--ink); border-color: #c7d8f8; }
#results { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; }
#results h2 { margin: 0; font-size: 19px; }
#result-meta { color: var(--muted); margin: 2px 0 8px; font-size: 13px; }
.look { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; font-size: 14px;
  margin-bottom: 10px; }
.look .check { margin: 0; }
.grid { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 12px;
  margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px; margin: 0; }
.card img { width: 100%; display: block; border-radius: 4px; }
.card figcaption { font-size: 13px; margin-top: 4px; }
.card .name { font-weight: 600; }
.card .box { color: var(--muted); }
.card.refused { color: var(--muted); }
.card.refused .why { color: var(--bad); }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart h4 { margin: 0 0 4px; font-size: 14px; }
.chart svg { background: #fbfcfd; border: 1px solid var(--line); border-radius: 4px; }
.chart .axis { stroke: #8b949e; stroke-width: 1; }
.chart text { font-size: 10px; fill: var(--muted); }
.chart polyline { fill: none; stroke-width: 2; }
#auc { border-collapse: collapse; margin-top: 10px; font-size: 14px; }
#auc th, #auc td { border-bottom: 1px solid var(--line); padding: 3px 12px 3px 0;
  text-align: left; }
#auc td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.downloads { font-size: 14px; }
.hint { color: var(--muted); font-size: 13px; margin: 2px 0 8px; }
"""

JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
                 "#0a7ea4", "#6e7781", "#fb8500", "#2da44e"];
const state = { session: null, info: null, photo: null, photos: new Map(), results: new Map(),
                result: null, target: null, busy: 0, job: null, estimateTimer: null,
                estimateSeq: 0 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function el(tag, attrs, ...children) {
  const svg = ["svg", "polyline", "line", "text", "rect", "g"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function showMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind === "info" ? "info" : "";
  m.hidden = false;
}
const showError = (text) => showMessage(text, "error");
function hideMessage() { $("message").hidden = true; $("message").textContent = ""; }

function setBusy(delta) {
  state.busy = Math.max(0, state.busy + delta);
  document.body.dataset.busy = String(state.busy);
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({ "X-Camlens-Session": state.session || "new" }, opts.headers);
  let response;
  try {
    response = await fetch(path, opts);
  } catch (err) {
    throw new Error("the camlens server cannot be reached: is `camlens app` still running?");
  }
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch (err) { data = { error: text || response.statusText }; }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                     body: JSON.stringify(body || {}) });
}

async function waitJob(started, onProgress) {
  for (;;) {
    const job = await api(`/api/jobs/${started.job}`);
    if (onProgress) onProgress(job);
    if (job.state === "done") return job.result;
    if (job.state === "failed" || job.state === "cancelled") throw new Error(job.error);
    await sleep(job.state === "queued" ? 400 : 200);
  }
}

function showJob(job) {
  $("progress").hidden = false;
  const bar = $("progress-bar");
  if (job.total > 0) { bar.max = job.total; bar.value = job.done; }
  else bar.removeAttribute("value");
  const ahead = job.position > 0 ? ` (${job.position} job(s) ahead in the queue)` : "";
  $("progress-text").textContent = job.stage + ahead;
}

function hideProgress() { if (state.busy === 0) $("progress").hidden = true; }

function seconds(s) {
  if (s < 1) return "under a second";
  if (s < 90) return `about ${Math.round(s)} s`;
  if (s < 5400) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} h`;
}
const megabytes = (n) => `${(n / 1048576).toFixed(1)} MB`;
const percent = (p) => `${(100 * p).toFixed(1)} %`;

// ------------------------------------------------------------------ start
async function start() {
  let info;
  try {
    info = await post("/api/session");
  } catch (err) { showError(err.message); return; }
  state.session = info.session;
  state.info = info;
  const m = info.model;
  $("model-info").textContent =
    `model ${m.name} · ${m.classes} classes · ${m.device} · input ${m.input} px`;
  $("labels").replaceChildren(...info.labels.map((l) => el("option", { value: l })));
  $("layers").replaceChildren(el("option", { value: "auto" }),
                              ...info.layers.map((l) => el("option", { value: l })));
  $("colormap").replaceChildren(...info.colormaps.map(
    (c) => el("option", { value: c, selected: c === "jet", text: c })));
  if (info.samples.length) {
    $("samples").replaceChildren(el("span", { text: "or a sample:" }), ...info.samples.map(
      (s) => el("button", { type: "button", "data-sample": s, text: s,
                            onclick: () => addSample(s) })));
  }
  const groups = [["pass", "one shared pass"], ["forwards", "extra forwards"],
                  ["heavy", "heavy: thousands of forwards"]];
  const boxes = [];
  for (const [kind, title] of groups) {
    const items = info.methods.filter((x) => x.kind === kind);
    if (!items.length) continue;
    boxes.push(el("h4", { text: title }));
    for (const x of items) {
      boxes.push(el("label", { title: x.description, "data-method": x.name },
        el("input", { type: "checkbox", name: "method", value: x.name, "data-kind": kind,
                      checked: !x.cannot && info.default_methods.includes(x.name),
                      onchange: scheduleEstimate }),
        el("span", { text: x.name }),
        el("span", { class: "cost", id: `cost-${x.name}` }),
        el("span", { class: "why", id: `why-${x.name}` })));
    }
  }
  $("methods").replaceChildren(...boxes);
  markUnavailable();
}

// A method the model cannot run is not offered: its box is off and the reason is beside it.
// The class-agnostic methods have no counterfactual, so they are off while it is asked for.
// A method that cannot run at the auto layer (CAM without its head) keeps its box and says
// why beside it: another layer may serve.
function markUnavailable() {
  const counter = $("counterfactual").checked;
  for (const x of state.info.methods) {
    const why = x.cannot ? `cannot apply to this model: ${x.cannot}`
      : counter && !x.class_specific
        ? "class-agnostic (the same map for every class): no counterfactual" : "";
    const box = document.querySelector(`input[name="method"][value="${x.name}"]`);
    if (why) box.checked = false;
    box.disabled = Boolean(why);
    box.closest("label").classList.toggle("off", Boolean(why));
    $(`why-${x.name}`).textContent = why || x.note || "";
  }
}

// ------------------------------------------------------------------ photos
async function addFiles(files) {
  const limit = state.info.limits.upload_bytes;
  for (const file of files) {
    if (file.size > limit) {
      showError(`${file.name}: ${megabytes(file.size)} is over this page's limit of ` +
                `${megabytes(limit)}; make the photo smaller`);
      continue;
    }
    await addPhoto(file.name, () => api("/api/photos", {
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream",
                 "X-Camlens-Name": encodeURIComponent(file.name) } }));
  }
}

function addSample(name) {
  return addPhoto(name, () => post(`/api/samples/${encodeURIComponent(name)}`));
}

async function addPhoto(name, send) {
  hideMessage();
  setBusy(1);
  showJob({ stage: `reading ${name}`, done: 0, total: 0, position: 0 });
  let photo = null;
  try {
    photo = await waitJob(await send(), showJob);
  } catch (err) {
    showError(`${name}: ${err.message}`);
  } finally {
    setBusy(-1);
    hideProgress();
  }
  if (!photo) return;
  state.photos.set(photo.id, photo);
  $("photos").append(el("button", { type: "button", "data-photo": photo.id, title: photo.name,
                                    onclick: () => selectPhoto(photo.id, false) },
    el("img", { src: `/api/photos/${state.session}/${photo.id}.png`, alt: photo.name })));
  if (photo.note) showMessage(photo.note, "info");
  selectPhoto(photo.id, true);
}

function selectPhoto(id, fresh) {
  const photo = state.photos.get(id);
  state.photo = photo;
  state.target = photo.predictions[0].class;
  for (const b of $("photos").children) {
    b.setAttribute("aria-pressed", String(b.dataset.photo === id));
  }
  renderPredictions();
  const last = state.results.get(id);
  if (last) showResult(last); else $("results").hidden = true;
  scheduleEstimate();
  if (fresh && !chosenMethods().some((m) => costly(m))) run();
}

function renderPredictions() {
  const photo = state.photo;
  $("predictions").replaceChildren(...photo.predictions.map((p) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${(100 * p.probability).toFixed(1)}%`;
    return el("li", {}, el("button", {
      type: "button", "data-class": p.class, "aria-pressed": String(p.class === state.target),
      onclick: () => { state.target = p.class; $("class-input").value = ""; markTarget(); run(); },
    }, bar, el("span", { class: "name", text: p.name }),
       el("span", { class: "p", text: percent(p.probability) })));
  }));
}

function markTarget() {
  for (const b of $("predictions").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.class) === state.target));
  }
}

// ------------------------------------------------------------------ methods and cost
function chosenMethods() {
  return [...document.querySelectorAll('input[name="method"]:checked')].map((i) => i.value);
}
function costly(name) {
  const m = state.info.methods.find((x) => x.name === name);
  return m && m.kind !== "pass";
}

function request(target) {
  return { photo: state.photo.id, methods: chosenMethods(), layer: $("layer").value,
           target: target === undefined ? state.target : target,
           counterfactual: $("counterfactual").checked,
           faithfulness: $("faithfulness").checked };
}

function scheduleEstimate() {
  clearTimeout(state.estimateTimer);
  state.estimateTimer = setTimeout(estimate, 250);
}

async function estimate() {
  for (const c of document.querySelectorAll(".methods .cost")) c.textContent = "";
  const est = $("estimate");
  est.className = "";
  if (!state.photo) { est.textContent = "Add a photo to start."; return; }
  if (!chosenMethods().length) { est.textContent = "Pick at least one method."; return; }
  const seq = ++state.estimateSeq;
  let plan;
  try {
    plan = await waitJob(await post("/api/estimate", request()));
  } catch (err) {
    if (seq === state.estimateSeq) { est.className = "warn"; est.textContent = err.message; }
    return;
  }
  if (seq !== state.estimateSeq) return;
  for (const [name, row] of Object.entries(plan.methods)) {
    const span = $(`cost-${name}`);
    if (span) span.textContent = `${row.partial ? "≤ " : ""}${row.forwards.toLocaleString()} ` +
                                 `forwards, ${seconds(row.seconds)}`;
  }
  const parts = Object.entries(plan.methods).map(
    ([n, r]) => `${n} ${r.forwards.toLocaleString()} forwards`);
  if (plan.faithfulness.forwards) parts.push(`faithfulness ${plan.faithfulness.forwards} forwards`);
  est.textContent = `Estimated: ${seconds(plan.seconds)}` +
                    (parts.length ? ` (${parts.join(", ")})` : "");
}

// ------------------------------------------------------------------ explaining
async function run(target) {
  if (!state.photo) {
    showError("Add a photo first: drop one, choose a file or click a sample.");
    return;
  }
  if (!chosenMethods().length) { showError("Pick at least one method."); return; }
  hideMessage();
  setBusy(1);
  $("cancel").hidden = false;
  showJob({ stage: "sending", done: 0, total: 0, position: 0 });
  try {
    const started = await post("/api/explain", request(target));
    state.job = started.job;
    const result = await waitJob(started, showJob);
    state.results.set(result.photo, result);
    if (state.photo && state.photo.id === result.photo) {
      state.target = result.target.class;
      markTarget();
      showResult(result);
    }
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(-1);
    if (state.busy === 0) $("cancel").hidden = true;
    hideProgress();
  }
}

function look() {
  const q = new URLSearchParams({ alpha: Number($("alpha").value).toFixed(2),
                                  colormap: $("colormap").value,
                                  box: $("show-boxes").checked ? "1" : "0" });
  return q.toString();
}

function resultUrl(r, path) {
  return `/api/results/${state.session}/${r.id}/${path}`;
}

function showResult(r) {
  state.result = r;
  const box = $("results");
  box.hidden = false;
  box.dataset.result = r.id;
  const t = r.target;
  const names = r.methods.map((m) => m.name);
  $("result-title").textContent = `${t.name} · ${percent(t.probability)}` +
    (r.counterfactual ? " · counterfactual: what argues against it" : "");
  $("result-meta").textContent = `class ${t.class} · layer ${r.layers.join(", ") || "auto"} · ` +
    `${names.length} map(s) in ${r.seconds.toFixed(2)} s`;
  const agnostic = (n) => !state.info.methods.find((x) => x.name === n).class_specific;
  const cards = r.methods.map((m) => el("figure", { class: "card", "data-method": m.name },
    el("img", { "data-overlay": m.name, alt: agnostic(m.name)
      ? `${m.name} map (class-agnostic)` : `${m.name} map of ${t.name}` }),
    el("figcaption", {},
      el("span", { class: "name", text: m.name }), " ",
      agnostic(m.name) ? el("span", { class: "box", text: "class-agnostic · " }) : null,
      el("span", { class: "box", text: m.empty
        ? `empty map: nothing argues ${r.counterfactual ? "against" : "for"} the class here`
        : `box ${JSON.stringify(m.box)} (map pixels of ${r.map_size[1]}×${r.map_size[0]})` }),
      el("br"),
      el("a", { href: resultUrl(r, `maps/${encodeURIComponent(m.name)}.npy`), download: true,
                text: "map .npy" }), " · ",
      el("a", { "data-overlay-link": m.name, download: true, text: "overlay .png" }))));
  for (const [name, why] of Object.entries(r.refused)) {
    cards.push(el("figure", { class: "card refused", "data-method": name },
      el("figcaption", {}, el("span", { class: "name", text: name }), el("br"),
        el("span", { class: "why", text: `cannot apply: ${why}` }))));
  }
  $("cards").replaceChildren(...cards);
  $("grid").hidden = names.length === 0;
  renderFaith(r);
  refreshPictures();
}

function refreshPictures() {
  const r = state.result;
  if (!r) return;
  const q = look();
  $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
  if (r.methods.length) $("grid").src = resultUrl(r, `grid.png?${q}`);
  for (const img of document.querySelectorAll("img[data-overlay]")) {
    img.src = resultUrl(r, `overlay/${encodeURIComponent(img.dataset.overlay)}.png?${q}`);
  }
  for (const a of document.querySelectorAll("a[data-overlay-link]")) {
    a.href = resultUrl(r, `overlay/${encodeURIComponent(a.dataset.overlayLink)}.png?${q}`);
  }
  $("download-zip").href = resultUrl(r, `camlens.zip?${q}`);
  $("download-grid").href = resultUrl(r, `grid.png?${q}`);
}

function chart(kind, curves, colours) {
  const W = 330, H = 210, L = 34, R = 8, T = 8, B = 30;
  const x = (f) => L + f * (W - L - R), y = (v) => T + (1 - v) * (H - T - B);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                          "aria-label": `${kind} curves` });
  svg.append(el("line", { class: "axis", x1: L, y1: y(0), x2: W - R, y2: y(0) }),
             el("line", { class: "axis", x1: L, y1: T, x2: L, y2: y(0) }));
  for (const v of [0, 0.5, 1]) {
    svg.append(el("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end", text: v.toFixed(1) }),
               el("text", { x: x(v), y: H - B + 13, "text-anchor": "middle", text: v.toFixed(1) }));
  }
  svg.append(el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle",
    text: kind === "deletion" ? "fraction of pixels removed" : "fraction of pixels inserted" }));
  for (const [name, c] of Object.entries(curves)) {
    const n = c.curve.length - 1;
    const pts = c.curve.map((v, k) => `${x(k / n).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points: pts, stroke: colours[name], "data-method": name }));
  }
  return el("div", { class: "chart", "data-kind": kind },
    el("h4", { text: `${kind}: probability of the class` }), svg);
}

function renderFaith(r) {
  const f = r.faithfulness;
  const box = $("faith");
  if (!f || !f.deletion) { box.hidden = true; return; }
  box.hidden = false;
  const colours = {};
  Object.keys(f.deletion).forEach((n, i) => { colours[n] = PALETTE[i % PALETTE.length]; });
  $("charts").replaceChildren(chart("deletion", f.deletion, colours),
                              chart("insertion", f.insertion, colours));
  const head = el("tr", {}, el("th", { text: "method" }), el("th", { text: "deletion area ↓" }),
                  el("th", { text: "insertion area ↑" }));
  const rows = Object.keys(f.deletion).map((n) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = colours[n];
    return el("tr", { "data-method": n }, el("td", {}, sw, n),
      el("td", { class: "num", text: f.deletion[n].auc.toFixed(3) }),
      el("td", { class: "num", text: f.insertion[n].auc.toFixed(3) }));
  });
  $("auc").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

// ------------------------------------------------------------------ wiring
$("upload").addEventListener("change", async (e) => {
  const files = [...e.target.files];
  e.target.value = "";
  await addFiles(files);
});
const drop = $("drop");
for (const t of ["dragenter", "dragover"]) {
  drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const t of ["dragleave", "drop"]) {
  drop.addEventListener(t, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles([...e.dataTransfer.files]); });
$("class-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("class-input").value.trim();
  if (!text) return;
  // a name the page does not know goes to the server as typed: its answer lists the
  // closest class names, and the class explained so far stays chosen
  const i = state.info.labels.findIndex((l) => l.toLowerCase() === text.toLowerCase());
  if (i >= 0) { state.target = i; markTarget(); run(); } else run(text);
});
$("run").addEventListener("click", () => run());
$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try { await post(`/api/jobs/${state.job}/cancel`); } catch (err) { showError(err.message); }
});
$("counterfactual").addEventListener("change", markUnavailable);
for (const id of ["layer", "counterfactual", "faithfulness"]) {
  $(id).addEventListener("change", scheduleEstimate);
}
$("alpha").addEventListener("input", () => {
  $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
});
for (const id of ["alpha", "colormap", "show-boxes"]) {
  $(id).addEventListener("change", refreshPictures);
}
start();
"""
