// cvpipe's page: drop, paste or choose images; every served model classifies each of them,
// side by side; the hand-made features' view of each image; the comparison reports.
// Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const state = {
  models: [],
  dataset: "",  // "" = every served model; else only the models trained on this dataset
  token: sessionStorage.getItem("cvpipe-token") || "",
  lastFiles: [],
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const pct = (v) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)}%`);

function size(n) {
  if (!n && n !== 0) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ------------------------------------------------------------------ the API

class ApiFailure extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const resp = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    // the API's own words: {error, message, status}
    throw new ApiFailure(resp.status, body && body.error,
                         (body && body.message) || `${resp.status} ${resp.statusText}`);
  }
  return body;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function askForToken(message) {
  $("token-form").hidden = false;
  showError(message);
  $("token").focus();
}

// ------------------------------------------------------------------ models and reports

function cardOf(model) {
  const c = model.card || {};
  const acc = model.accuracy || {};
  const shape = `${(model.input_size || []).join("×")}×${model.channels || 3}`;
  return el("article", { class: `card ${model.kind === "cnn" ? "cnn" : "classic"}`,
                         "data-model": model.name },
    el("h3", { text: model.name }),
    el("p", { class: "meta", text: [c.family, c.features, c.classifier].filter(Boolean).join(" · ") }),
    el("p", { class: "meta",
              text: `train ${pct(acc.train)} · val ${pct(acc.val)} · test ${pct(acc.test)}` }),
    el("p", { class: "meta", text: `fit ${model.fit_seconds == null ? "n/a" : model.fit_seconds.toFixed(1) + " s"}`
              + ` · ${size(model.size_bytes)} · ${model.trained_on || "?"} ${shape}` }),
    el("div", { class: "prediction" }));
}

function chosenModels() {
  return state.models.filter((m) => !state.dataset || m.trained_on === state.dataset);
}

function datasetFilter() {
  // models trained on several datasets: classify with one dataset's models at a time
  const counts = {};
  for (const m of state.models) counts[m.trained_on || "?"] = (counts[m.trained_on || "?"] || 0) + 1;
  const names = Object.keys(counts).sort();
  const select = $("dataset");
  $("dataset-box").hidden = names.length < 2;
  if (names.length < 2) { state.dataset = ""; return; }
  if (!names.includes(state.dataset)) state.dataset = names.reduce((a, b) => (counts[b] > counts[a] ? b : a));
  select.replaceChildren(el("option", { value: "", text: `all ${state.models.length} models` }),
    ...names.map((n) => el("option", { value: n, text: `${n} (${counts[n]} models)`, selected: n === state.dataset })));
}

function renderModels() {
  const box = $("models");
  box.replaceChildren(...chosenModels().map(cardOf));
}

async function loadModels() {
  const body = await api("/v1/models");
  state.models = body.models;
  datasetFilter();
  renderModels();
  const box = $("models");
  if (!state.models.length) box.append(el("p", { text: "No model is served." }));
  for (const bad of body.unavailable || []) {
    box.append(el("p", { class: "failed", text: `${bad.name} not loaded${bad.reason ? ": " + bad.reason : ""}` }));
  }
}

async function loadReports() {
  const body = await api("/v1/reports");
  const list = $("reports");
  list.replaceChildren(...body.reports.map((r) => el("li", {},
    el("a", { href: r.url, text: r.title }), el("span", { class: "meta", text: r.created ? ` (${r.created})` : "" }))));
  if (!body.reports.length) {
    list.append(el("li", { class: "meta", text: "None: start the server with cvpipe serve --reports reports/." }));
  }
}

async function checkAuth() {
  const doc = await api("/openapi.json");
  if (doc.components && doc.components.securitySchemes && !state.token) $("token-form").hidden = false;
}

// ------------------------------------------------------------------ one round of predictions

function bars(body) {
  const prediction = body.predictions[0];
  const probabilities = body.score_kind === "probability";
  const scores = prediction.top_k.map((t) => t.score);
  const lo = Math.min(...scores, 0);
  const hi = Math.max(...scores);
  const rows = prediction.top_k.map((t) => {
    const share = probabilities ? t.score : (hi > lo ? (t.score - lo) / (hi - lo) : 1);
    return el("div", { class: "bar" },
      el("span", { class: "label", text: t.label, title: t.label }),
      el("span", { class: "track", role: "img", "aria-label": `${t.label}: ${probabilities ? pct(t.score) : t.score.toFixed(3)}` },
         el("span", { class: "fill", style: `width: ${Math.max(0, Math.min(1, share)) * 100}%` })),
      el("span", { class: "value", text: probabilities ? pct(t.score) : t.score.toFixed(2) }));
  });
  return [el("p", { class: "top", "data-label": prediction.label },
             el("strong", { text: prediction.label }),
             el("span", { class: "meta", text: ` in ${body.timing_ms.total.toFixed(1)} ms` })),
          ...rows,
          probabilities ? null : el("p", { class: "note", text: "decision scores, not probabilities" })]
    .filter(Boolean);
}

async function predictOne(file, model, card) {
  const slot = card.querySelector(".prediction");
  slot.replaceChildren(el("p", { class: "meta", text: "…" }));
  const form = new FormData();
  form.append("images", file, file.name || "pasted.png");
  try {
    const body = await api(`/v1/models/${encodeURIComponent(model.name)}/predict?top_k=3`,
                           { method: "POST", body: form });
    slot.replaceChildren(...bars(body));
  } catch (err) {
    slot.replaceChildren(el("p", { class: "failed", text: err.message }));
    throw err;
  }
}

async function showPictures(file, modelName, box) {
  const form = new FormData();
  form.append("images", file, file.name || "pasted.png");
  box.replaceChildren(el("p", { class: "meta", text: "drawing…" }));
  try {
    const body = await api(`/v1/models/${encodeURIComponent(modelName)}/pictures`, { method: "POST", body: form });
    const shape = `${body.input_size.join("×")}, ${body.channels === 1 ? "gray" : "RGB"}`;
    box.replaceChildren(
      el("figure", {}, el("img", { src: body.pictures.input, alt: `the image as ${modelName} receives it`, class: "input" }),
         el("figcaption", { text: `as the model receives it (${shape}, ${body.fit}), enlarged` })),
      el("figure", {}, el("img", { src: body.pictures.hog, alt: `HOG glyphs of the image for ${modelName}`, class: "hog" }),
         el("figcaption", { text: "HOG glyphs" })),
      el("figure", {}, el("img", { src: body.pictures.histogram, alt: `colour histogram of the image for ${modelName}`, class: "histogram" }),
         el("figcaption", { text: body.channels === 1 ? "intensity histogram" : "colour histogram" })));
  } catch (err) {
    box.replaceChildren(el("p", { class: "failed", text: err.message }));
    throw err;
  }
}

function imageBlock(file, index, models) {
  const classic = models.filter((m) => m.kind !== "cnn" && m.features);
  const cards = Object.fromEntries(models.map((m) => [m.name, cardOf(m)]));
  const pictures = el("div", { class: "pictures" });
  let picker = null;
  if (classic.length) {
    picker = el("select", { "aria-label": "Model whose features to draw" },
                ...classic.map((m) => el("option", { value: m.name, text: m.name })));
    // start with a model that uses HOG, whose glyphs say the most
    const withHog = classic.find((m) => (m.features.components || []).some((c) => c.name === "hog"));
    if (withHog) picker.value = withHog.name;
    picker.addEventListener("change", () => showPictures(file, picker.value, pictures).catch(onFailure));
  }
  const block = el("section", { class: "image-block", "aria-label": `Image ${index + 1}: ${file.name || "pasted"}` },
    el("div", { class: "image-head" },
       el("img", { src: URL.createObjectURL(file), alt: file.name || "pasted image" }),
       el("div", {}, el("h2", { text: file.name || "pasted image" }),
          el("p", { class: "meta", text: `${size(file.size)} ${file.type || ""}` }))),
    el("div", { class: "cards" }, ...Object.values(cards)),
    classic.length ? el("details", { open: true },
      el("summary", { text: "What the hand-made features see" }),
      el("p", {}, el("label", { text: "Features of " }), picker), pictures) : null);
  return { block, cards, pictures, picker };
}

function onFailure(err) {
  if (err && err.status === 401) askForToken(err.message);
  else if (err) showError(err.message);
}

async function classify(files) {
  const list = [...files];
  if (!list.length) return;
  state.lastFiles = list;
  showError("");
  if (!state.models.length) await loadModels();
  const models = chosenModels();
  const results = $("results");
  results.replaceChildren();
  $("status").textContent = `Classifying ${list.length} image(s) with ${models.length} model(s)…`;
  const started = performance.now();
  const jobs = [];
  list.forEach((file, i) => {
    const { block, cards, pictures, picker } = imageBlock(file, i, models);
    results.append(block);
    for (const model of models) jobs.push(predictOne(file, model, cards[model.name]));
    if (picker) jobs.push(showPictures(file, picker.value, pictures));
  });
  const outcomes = await Promise.allSettled(jobs);
  const ms = performance.now() - started;
  const failed = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason);
  window.cvpipeLastRound = { ms, images: list.length, models: models.length, failed: failed.length };
  $("status").textContent = `${list.length} image(s) × ${models.length} model(s) in ${ms.toFixed(0)} ms`
    + (failed.length ? `; ${failed.length} request(s) failed` : ".");
  const unauthorised = failed.find((f) => f.status === 401);
  if (unauthorised) askForToken(unauthorised.message);
  else if (failed.length) showError(failed[0].message);
}

// ------------------------------------------------------------------ input

function wireInput() {
  const drop = $("drop");
  const chooser = $("files");
  drop.addEventListener("click", () => chooser.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); chooser.click(); }
  });
  chooser.addEventListener("change", () => {
    const files = [...chooser.files];
    chooser.value = "";  // so that choosing the same file again classifies it again
    classify(files).catch(onFailure);
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); classify(e.dataTransfer.files).catch(onFailure); });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (files.length) { e.preventDefault(); classify(files).catch(onFailure); }
  });
  $("dataset").addEventListener("change", () => {
    state.dataset = $("dataset").value;
    renderModels();
    if (state.lastFiles.length) classify(state.lastFiles).catch(onFailure);
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("cvpipe-token", state.token);
    $("token-form").hidden = true;
    showError("");
    if (state.lastFiles.length) classify(state.lastFiles).catch(onFailure);
  });
}

window.addEventListener("DOMContentLoaded", () => {
  wireInput();
  Promise.all([loadModels(), loadReports(), checkAuth()])
    .then(() => { document.body.dataset.ready = "true"; })
    .catch((err) => { document.body.dataset.ready = "true"; onFailure(err); });
});
