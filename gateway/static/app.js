// medchain web page: talks only to this gateway's /api/v1. No inline script, no build step.
"use strict";

const API = "/api/v1";
const state = { cards: {}, warmed: {}, last: null, pollTimer: null, key: null, caller: null, tab: "diabetes" };

const $ = (sel, root = document) => root.querySelector(sel);

function apiKeyHeaders() {
  return state.key ? { authorization: `Bearer ${state.key}` } : {};
}

async function call(path, options = {}) {
  const res = await fetch(API + path, {
    ...options,
    headers: { ...(options.headers || {}), ...apiKeyHeaders() },
  });
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : { detail: await res.text() };
  if (!res.ok) {
    const where = body.field ? ` (field: ${body.field})` : body.upstream ? ` (${body.upstream})` : "";
    const err = new Error(`${body.detail || res.statusText}${where}`);
    err.status = res.status;
    err.field = body.field;
    throw err;
  }
  return body;
}

function showError(message) {
  const el = $("#error");
  el.textContent = message;
  el.hidden = !message;
}

// ---- tabs -------------------------------------------------------------------------------
function selectTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $("#" + t.getAttribute("aria-controls")).hidden = !on;
  }
  state.tab = tab.dataset.disease;
  openDisease(tab.dataset.disease);
}

function setupTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!d) return;
      const next = tabs[(i + d + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  });
}

// ---- panels, built from the model cards ---------------------------------------------------
function panel(disease) {
  return $(`.panel[data-disease=${disease}]`);
}

async function openDisease(disease) {
  const p = panel(disease);
  if (!state.caller) {
    setServiceState(p, "Sign in to use this service.");
    return;
  }
  // Auditors make no predictions: nothing to warm up for them.
  if (!state.warmed[disease] && state.caller.role !== "auditor") {
    state.warmed[disease] = true;
    // Wakes a sleeping instance and loads both models in the background: the first
    // prediction is then fast.
    call(`/${disease}/warmup`, { method: "POST" })
      .then(() => {
        setServiceState(p, "Models are loading in the background.");
        return watchModels(disease, p);
      })
      .catch((e) => setServiceState(p, `Could not warm the service yet: ${e.message}`));
  }
  if (!state.cards[disease]) {
    try {
      state.cards[disease] = await call(`/${disease}/cards`);
      buildForm(p, state.cards[disease]);
    } catch (e) {
      state.warmed[disease] = false;
      setServiceState(p, `The ${disease} service is not reachable: ${e.message}`);
    }
  }
}

// Follows the warm-up until both models are ready (or one failed), at most a minute.
async function watchModels(disease, p) {
  for (let i = 0; i < 120; i += 1) {
    const { models } = await call(`/${disease}/models`);
    const failed = models.find((m) => m.state === "failed");
    if (failed) {
      setServiceState(p, `The ${failed.key} model could not be loaded: ${failed.reason || "unknown reason"}`);
      return;
    }
    if (models.every((m) => m.state === "ready")) {
      setServiceState(p, "Models loaded: predictions answer at once.");
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

function setServiceState(p, text) {
  const el = $(".service-state", p);
  if (el) el.textContent = text;
}

function unitText(unit) {
  return unit && !["1", "code", "count"].includes(unit) ? ` ${unit}` : "";
}

function buildForm(p, cards) {
  const tabular = cards.tabular;
  const fields = $(".fields", p);
  fields.replaceChildren();
  for (const f of tabular.features) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = document.createElement("label");
    const range = f.allowed
      ? `one of ${f.allowed.join(", ")}`
      : `${f.min}–${f.max}${unitText(f.unit)}`;
    label.append(`${f.description} `);
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = `(${range}${f.nullable ? "; optional" : ""})`;
    label.append(hint);
    let input;
    if (f.allowed) {
      input = document.createElement("select");
      input.append(new Option(f.nullable ? "— not measured —" : "— choose —", ""));
      input.required = !f.nullable;
      for (const a of f.allowed) input.append(new Option(String(a), String(a)));
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.min = f.min;
      input.max = f.max;
      input.step = f.integer ? "1" : "any";
      input.inputMode = f.integer ? "numeric" : "decimal";
      input.required = !f.nullable;
    }
    input.name = f.name;
    input.dataset.feature = f.name;
    label.append(input);
    wrap.append(label);
    fields.append(wrap);
  }
  $(".panel-title", p).textContent = `${cards.disease === "diabetes" ? "Diabetes" : "Heart disease"} risk`;
  $(".image-legend", p).textContent = p.dataset.imageLabel;
  const img = cards.image;
  setServiceState(
    p,
    `Models: ${tabular.model_id} ${tabular.version}${img && img.model_id ? `, ${img.model_id} ${img.version}` : ""}.`,
  );
}

function initPanels() {
  const tpl = $("#panel-template");
  for (const p of document.querySelectorAll(".panel")) {
    p.append(tpl.content.cloneNode(true));
    $("form.tabular", p).addEventListener("submit", (e) => submitTabular(e, p));
    $("form.image", p).addEventListener("submit", (e) => submitImage(e, p));
  }
}

// ---- predictions ---------------------------------------------------------------------------
function features(p) {
  const out = {};
  for (const input of p.querySelectorAll("[data-feature]")) {
    input.removeAttribute("aria-invalid");
    const v = input.value.trim();
    out[input.dataset.feature] = v === "" ? null : Number(v);
  }
  return out;
}

async function submitTabular(e, p) {
  e.preventDefault();
  const disease = p.dataset.disease;
  const form = e.currentTarget;
  const button = $("button[type=submit]", form);
  const body = features(p);
  const patient = form.elements.patient_id.value.trim();
  if (patient) body.patient_id = patient;
  button.disabled = true;
  showError("");
  try {
    const result = await call(`/${disease}/predict/tabular`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const input = { ...body };
    delete input.patient_id;
    show(result, { kind: "features", features: input, patient });
  } catch (err) {
    if (err.field) {
      const bad = p.querySelector(`[data-feature="${err.field}"]`);
      if (bad) {
        bad.setAttribute("aria-invalid", "true");
        bad.focus();
      }
    }
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

async function submitImage(e, p) {
  e.preventDefault();
  const disease = p.dataset.disease;
  const form = e.currentTarget;
  const file = form.elements.image.files[0];
  if (!file) {
    showError("Choose an image first.");
    form.elements.image.focus();
    return;
  }
  const button = $("button[type=submit]", form);
  const data = new FormData();
  data.append("image", file);
  const patient = form.elements.patient_id.value.trim();
  if (patient) data.append("patient_id", patient);
  button.disabled = true;
  showError("");
  try {
    // With the class activation map of the predicted class, drawn beside the upload.
    const result = await call(`/${disease}/predict/${p.dataset.image}?explain=cam`, { method: "POST", body: data });
    show(result, { kind: "image", file, patient });
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

function show(result, input) {
  state.last = { result, input };
  $("#result").hidden = false;
  const notice = $("#demo-notice");
  notice.hidden = false;
  notice.textContent =
    result.demo && !/^demo/i.test(result.notice) ? `Demo model: ${result.notice}` : result.notice;
  const r = result.result;
  const summary = $("#result-summary");
  summary.replaceChildren();
  summary.append(`${r.name}: probability ${(r.probability * 100).toFixed(1)}% — risk band `);
  const band = document.createElement("span");
  band.className = `band-${r.risk_band}`;
  band.id = "risk-band";
  band.textContent = r.risk_band;
  summary.append(band);
  const rows = $("#probabilities tbody");
  rows.replaceChildren();
  for (const c of r.probabilities) {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = c.name;
    const pct = document.createElement("td");
    pct.textContent = `${(c.probability * 100).toFixed(1)}%`;
    const bar = document.createElement("td");
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = c.probability;
    meter.setAttribute("aria-label", `${c.name} probability`);
    bar.append(meter);
    tr.append(name, pct, bar);
    rows.append(tr);
  }
  const m = result.model;
  $("#model-summary").textContent =
    `Model ${m.id} version ${m.version} (sha256 ${m.sha256.slice(0, 12)}…), inference ${result.inference_ms.toFixed(1)} ms. ` +
    cardSummary(result.disease, m.id);
  showExplanation(result, input);
  showAudit(result.audit);
  $("#result").scrollIntoView({ behavior: "smooth", block: "start" });
}

// ---- explanations ----------------------------------------------------------------------------
const sigmoid = (x) => 1 / (1 + Math.exp(-x));
const SVG = "http://www.w3.org/2000/svg";
const TREESHAP_NOTE =
  "Exact TreeSHAP contributions of each measurement to the model's log-odds: how this model weighed the values it was given, " +
  "starting from its average over the training data. They describe the model, not what causes the disease, and are not a clinical finding.";

// A tabular prediction's TreeSHAP contributions: a table, largest effect first, each row with
// its value (and unit, from the card) and a bar left (lowers the risk) or right (raises it) of
// the axis. The bars are drawn as SVG attributes, not inline style (the page's CSP).
function showExplanation(result, input) {
  const box = $("#explanation");
  const e = result.explanation;
  const rows = $("#contributions tbody");
  rows.replaceChildren();
  $("#cam").hidden = true;
  $("#contributions").hidden = true;
  if (!e) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const summary = $("#explanation-summary");
  if (e.unavailable) {
    summary.textContent = `No explanation for this prediction: ${e.unavailable}`;
    return;
  }
  if (e.method === "cam") {
    showCam(result, input, e);
    return;
  }
  $("#contributions").hidden = false;
  $("#explanation-note").textContent = TREESHAP_NOTE;
  const positive = result.result.risk && result.result.risk.positive_label;
  const cls = (result.result.probabilities.find((c) => c.label === positive) || {}).name || "the positive class";
  summary.textContent =
    `The model starts from ${(sigmoid(e.base_value) * 100).toFixed(1)}% (its average) for “${cls}”; ` +
    `these measurements take it to ${(sigmoid(e.margin) * 100).toFixed(1)}%.`;
  const card = (state.cards[result.disease] || {}).tabular || { features: [] };
  const byName = Object.fromEntries(card.features.map((f) => [f.name, f]));
  const sorted = [...e.contributions].sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
  const scale = Math.max(...sorted.map((c) => Math.abs(c.contribution)), 1e-9);
  for (const c of sorted) {
    const f = byName[c.feature] || {};
    const tr = document.createElement("tr");
    tr.dataset.feature = c.feature;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = f.description || c.feature;
    const value = document.createElement("td");
    value.textContent = c.value == null ? "not measured" : `${c.value}${unitText(f.unit)}`;
    const effect = document.createElement("td");
    const up = c.contribution > 0;
    effect.className = up ? "raises" : "lowers";
    const size = Math.abs(c.contribution).toFixed(3);
    effect.textContent = c.contribution === 0 ? "none" : `${up ? "raises" : "lowers"} (${up ? "+" : "−"}${size} log-odds)`;
    const bar = document.createElement("td");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 200 10");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const w = (Math.abs(c.contribution) / scale) * 100;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", String(up ? 100 : 100 - w));
    rect.setAttribute("y", "1");
    rect.setAttribute("width", String(w));
    rect.setAttribute("height", "8");
    rect.setAttribute("class", up ? "raises" : "lowers");
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", "100");
    axis.setAttribute("x2", "100");
    axis.setAttribute("y1", "0");
    axis.setAttribute("y2", "10");
    axis.setAttribute("class", "axis");
    svg.append(rect, axis);
    bar.append(svg);
    tr.append(name, value, effect, bar);
    rows.append(tr);
  }
}

// Where in the image a grid cell lies, in words.
function place(row, col, h, w) {
  const v = row < h / 3 ? "upper" : row >= (2 * h) / 3 ? "lower" : "middle";
  const s = col < w / 3 ? "left" : col >= (2 * w) / 3 ? "right" : "centre";
  return v === "middle" && s === "centre" ? "centre" : `${v} ${s}`.replace("middle ", "");
}

// An image prediction's class activation map: the upload and the heat map over the image as
// the model saw it, side by side, with the strongest place said in words.
function showCam(result, input, e) {
  const cls = (result.result.probabilities.find((c) => c.label === e.class) || {}).name || e.class;
  $("#explanation-summary").textContent =
    `Where the model found the evidence for “${cls}”: red is strongest, blue weakest.`;
  const where = place(e.peak.row, e.peak.col, e.grid.height, e.grid.width);
  const upload = $("#cam-upload");
  if (state.uploadUrl) URL.revokeObjectURL(state.uploadUrl);
  state.uploadUrl = input && input.file ? URL.createObjectURL(input.file) : "";
  upload.src = state.uploadUrl;
  upload.alt = "The uploaded image";
  const overlay = $("#cam-overlay");
  overlay.src = e.overlay_png;
  overlay.alt = `Heat map of the evidence for ${cls}, strongest in the ${where} of the image`;
  $("#cam-caption").textContent =
    `Class activation map (a ${e.grid.height}×${e.grid.width} grid over the image as the model saw it): strongest in the ${where}.`;
  $("#explanation-note").textContent =
    "The map shows where in the image the model's evidence for the class lay. It describes the model, not a finding; " +
    "these demo models learned from synthetic images, and their maps show what the demo learned.";
  $("#cam").hidden = false;
}

// The model card in one sentence: what it learned from and how well it did.
function cardSummary(disease, modelId) {
  const cards = state.cards[disease];
  if (!cards) return "";
  const card = [cards.tabular, cards.image].find((c) => c && c.model_id === modelId);
  if (!card) return "";
  const metrics = card.metrics || {};
  const parts = [];
  if (card.training && card.training.data) parts.push(`Trained on ${card.training.data}.`);
  if (metrics.cv_roc_auc_mean != null)
    parts.push(`Cross-validated ROC AUC ${metrics.cv_roc_auc_mean} ± ${metrics.cv_roc_auc_std}.`);
  if (metrics.heldout_synthetic_accuracy != null)
    parts.push(`Held-out accuracy on synthetic images ${metrics.heldout_synthetic_accuracy}.`);
  return parts.join(" ");
}

// ---- audit record ---------------------------------------------------------------------------
function setAuditFields(fields) {
  const dl = $("#audit-fields");
  dl.replaceChildren();
  for (const [k, v] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    if (k === "Status") dd.id = "audit-status";
    if (k === "Record id") dd.id = "audit-id";
    dl.append(dt, dd);
  }
}

function showAudit(audit) {
  clearTimeout(state.pollTimer);
  $("#verify").hidden = true;
  $("#verify-result").textContent = "";
  if (!audit) {
    setAuditFields([["Status", "not recorded (no patient id given)"]]);
    return;
  }
  if (audit.status === "unrecorded" || audit.status === "unknown") {
    setAuditFields([["Status", audit.status], ["Reason", audit.reason]]);
    return;
  }
  state.last.receipt = audit;
  setAuditFields([["Record id", audit.prediction_id], ["Status", audit.status]]);
  poll(audit.prediction_id, 0);
}

async function poll(id, attempt) {
  try {
    const rec = await call(`/records/${encodeURIComponent(id)}`);
    const fields = [["Record id", id], ["Status", rec.status]];
    if (rec.batch) fields.push(["Batch", `#${rec.batch.seq} (${rec.batch.records} records)`]);
    if (rec.tx_hash) fields.push(["Transaction", rec.tx_hash]);
    if (rec.block_number != null) fields.push(["Block", String(rec.block_number)]);
    if (rec.last_error) fields.push(["Last error", rec.last_error]);
    setAuditFields(fields);
    if (rec.status === "confirmed") {
      $("#verify").hidden = false;
      return;
    }
    if (rec.status === "rejected") return;
  } catch (e) {
    setAuditFields([["Record id", id], ["Status", `unknown (${e.message})`]]);
  }
  const delay = Math.min(1000 * 2 ** Math.floor(attempt / 5), 10000);
  state.pollTimer = setTimeout(() => poll(id, attempt + 1), delay);
}

async function verify() {
  const { result, input, receipt } = state.last;
  const out = $("#verify-result");
  out.textContent = "Checking…";
  try {
    let v;
    const path = `/records/${encodeURIComponent(result.prediction_id)}/verify`;
    if (input.kind === "features") {
      v = await call(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ features: input.features, salt: receipt.salt, patient_id: input.patient || undefined }),
      });
    } else if (crypto.subtle) {
      // The image's SHA-256 is computed here: the image does not travel again, and the patient
      // id goes in the body (never in a URL, which proxies log).
      const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", await input.file.arrayBuffer()));
      const digest = "0x" + [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
      v = await call(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input_digest: digest, salt: receipt.salt, patient_id: input.patient || undefined }),
      });
    } else {
      // Not a secure context (no WebCrypto): the image itself, without the patient check.
      v = await call(`${path}?${new URLSearchParams({ salt: receipt.salt })}`, {
        method: "POST",
        headers: { "content-type": input.file.type || "application/octet-stream" },
        body: input.file,
      });
    }
    out.textContent = v.verified
      ? "Verified: this input and patient match the record on chain."
      : "NOT verified: the input or patient does not match the record on chain.";
  } catch (e) {
    out.textContent = `Could not verify: ${e.message}`;
  }
}

// ---- signing in ----------------------------------------------------------------------------
// The key stays in this tab's sessionStorage; a development link may carry it in the URL
// fragment (#key=…), which never reaches a server and is removed from the address bar at once.
async function signIn(key) {
  state.key = key;
  try {
    const me = await call("/whoami");
    state.caller = me;
    sessionStorage.setItem("medchain-api-key", key);
    $("#whoami").textContent = `Signed in as ${me.id} (${me.role})`;
    $("#signin-form").hidden = true;
    $("#signout").hidden = false;
    showError("");
    openDisease(state.tab);
  } catch (e) {
    state.key = null;
    state.caller = null;
    sessionStorage.removeItem("medchain-api-key");
    $("#whoami").textContent = `Not signed in: ${e.message}`;
  }
}

function signOut() {
  sessionStorage.removeItem("medchain-api-key");
  state.key = null;
  state.caller = null;
  state.cards = {};
  state.warmed = {};
  $("#whoami").textContent = "Signed out.";
  $("#signin-form").hidden = false;
  $("#signout").hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#verify").addEventListener("click", verify);
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#api-key").value.trim());
    $("#api-key").value = "";
  });
  $("#signout").addEventListener("click", signOut);
  initPanels();
  setupTabs();
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromLink) history.replaceState(null, "", location.pathname + location.search);
  const key = fromLink || sessionStorage.getItem("medchain-api-key");
  if (key) signIn(key);
  else openDisease(state.tab);
});
