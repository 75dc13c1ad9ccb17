// deepserve try-it page: one card per model, built from GET /v1/models and GET /v2/models/{name}.
// A task type maps to one widget function (WIDGETS below); a new task type needs only a new entry.
// Every request goes to this server, by relative URL (works behind a path prefix too).
"use strict";

const WIDGETS = {
  "image-classification": imageWidget,
  "anomaly-detection": imageWidget,
  "text-classification": textWidget,
  "embedding": embeddingWidget,
  "speech-recognition": audioWidget,
  "audio-classification": audioWidget,
  "image-generation": generationWidget,
};
const METRIC_NAMES = {
  accuracy: "accuracy", macro_f1: "macro-F1", wer: "WER", cer: "CER", auroc: "AUROC", fid: "FID",
};
const PERCENT_METRICS = new Set(["accuracy", "wer", "cer"]);

// ---- HTTP ----------------------------------------------------------------------------------------

class ServerError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

async function call(url, init = {}) {
  const started = performance.now();
  const token = sessionStorage.getItem("deepserve-api-key");
  const headers = { ...(init.headers || {}), ...(token ? { authorization: `Bearer ${token}` } : {}) };
  let response;
  try {
    response = await fetch(url, { ...init, headers });
  } catch (err) {
    throw new ServerError(`The server could not be reached (${err.message}).`, 0, "network");
  }
  const text = await response.text();
  const ms = performance.now() - started;
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: reported below if it is an error */ }
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}: ${text.slice(0, 300)}`;
    throw new ServerError(message, response.status, body && body.code);
  }
  return { body, ms, timing: parseServerTiming(response.headers.get("server-timing")) };
}

function parseServerTiming(header) {
  // "queue;dur=0.4, compute;dur=3.1;desc=..." -> [{name, dur}]
  if (!header) return [];
  return header.split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return { name, dur: dur ? Number(dur.slice(4)) : null };
  }).filter((entry) => entry.name && entry.dur !== null);
}

// ---- page ----------------------------------------------------------------------------------------

const page = { explain: false };

async function main() {
  const status = document.getElementById("server");
  let models, openapi;
  try {
    [models, openapi] = await Promise.all([call("v1/models"), call("openapi.json")]);
  } catch (err) {
    status.textContent = `Could not list the models: ${err.message}`;
    status.classList.add("error");
    if (err.status === 401) askForKey(status);
    return;
  }
  const paths = (openapi.body && openapi.body.paths) || {};
  page.explain = "/v1/models/{name}/explain" in paths;
  const list = models.body.models || [];
  const metadata = await Promise.all(list.map((m) => call(`v2/models/${encodeURIComponent(m.name)}`)
    .then((r) => r.body).catch(() => null)));
  const main = document.getElementById("models");
  list.forEach((model, i) => main.appendChild(card(model, metadata[i])));
  const ready = list.filter((m) => m.state === "READY").length;
  status.textContent = `${list.length} model${list.length === 1 ? "" : "s"}, ${ready} ready` +
    (page.explain ? " · explanations available" : "");
  document.addEventListener("paste", onPaste);
}

// A server started with DEEPSERVE_API_KEYS answers the API with 401: ask for a key, keep it for this tab.
function askForKey(status) {
  const form = document.createElement("form");
  form.className = "row";
  const label = document.createElement("label");
  label.className = "field";
  label.textContent = "API key (kept in this tab only)";
  const input = document.createElement("input");
  input.type = "password";
  input.autocomplete = "off";
  label.appendChild(input);
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = "Use key";
  form.append(label, submit);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("deepserve-api-key", input.value.trim());
    location.reload();
  });
  status.after(form);
}

function card(model, meta) {
  const node = document.getElementById("card").content.firstElementChild.cloneNode(true);
  const params = (meta && meta.parameters) || {};
  node.id = `model-${model.name}`;
  node.dataset.model = model.name;
  node.dataset.task = model.task || "";
  node.dataset.state = "idle";
  const title = node.querySelector(".name");
  title.textContent = model.name;
  title.id = `title-${model.name}`;
  node.setAttribute("aria-labelledby", title.id);
  node.querySelector(".task").textContent = model.task || "tensors only";
  const state = node.querySelector(".state");
  state.textContent = model.state === "READY" ? "ready" : model.state.toLowerCase().replace("_", " ");
  state.classList.add(model.state === "READY" ? "ready" : "not-ready");
  node.querySelector(".desc").textContent = model.description || "";
  const facts = node.querySelector(".facts");
  const versions = (meta && meta.versions) || [model.version];
  fact(facts, versions.length > 1 ? "versions" : "version", `${versions.join(", ")} (serving ${model.version})`);
  if (params.providers) fact(facts, "runs on", params.providers.map((p) => p.replace("ExecutionProvider", "")).join(", "));
  const metrics = describeMetrics(params.provenance);
  if (metrics) fact(facts, "held-out", metrics);
  if (params.error) fact(facts, "error", params.error);
  const widget = WIDGETS[model.task];
  const ui = new CardUi(node, model, params);
  if (model.state !== "READY") {
    ui.widget.textContent = "This model is not ready, so it cannot be tried now.";
  } else if (widget) {
    widget(ui);
  } else {
    const text = document.createElement("p");
    text.className = "hint";
    text.innerHTML = `No input widget for this model's task; send tensors to <code>POST /v2/models/${escapeHtml(model.name)}/infer</code> (see <a href="docs">the API docs</a>).`;
    ui.widget.appendChild(text);
  }
  return node;
}

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function describeMetrics(provenance) {
  if (!provenance || !provenance.metrics) return "";
  const metrics = provenance.metrics;
  const parts = Object.keys(METRIC_NAMES).filter((k) => typeof metrics[k] === "number").map((k) => {
    const v = metrics[k];
    return `${METRIC_NAMES[k]} ${PERCENT_METRICS.has(k) ? (100 * v).toFixed(1) + "%" : v.toFixed(3)}`;
  });
  const size = metrics.heldout_size || (provenance.data && provenance.data.heldout_size);
  if (parts.length && size) parts.push(`on ${size} items`);
  if (provenance.quick) parts.push("(quick build)");
  return parts.join(" · ");
}

// One card's shared parts: where widgets put inputs, results, errors and timings.
class CardUi {
  constructor(node, model, params) {
    this.node = node;
    this.model = model;
    this.params = params;
    this.task = params.task || {};
    this.widget = node.querySelector(".widget");
    this.result = node.querySelector(".result");
    this.explanation = node.querySelector(".explanation");
    this.error = node.querySelector(".error");
    this.timing = node.querySelector(".timing");
    this.seq = 0;
    this.base = `v1/models/${encodeURIComponent(model.name)}`;
  }

  // Run `work` (returns {body, ms, timing}) and show its result with `render`; stale answers are dropped.
  async run(work, render, { explanation = false } = {}) {
    const seq = ++this.seq;
    this.node.dataset.state = "busy";
    this.node.setAttribute("aria-busy", "true");
    this.error.hidden = true;
    if (!explanation) this.explanation.replaceChildren();
    try {
      const answer = await work();
      if (seq !== this.seq) return;
      render(answer.body);
      this.showTiming(answer, explanation ? "explanation" : "answer");
      this.node.dataset.state = "done";
    } catch (err) {
      if (seq !== this.seq) return;
      this.showError(err);
    } finally {
      if (seq === this.seq) this.node.removeAttribute("aria-busy");
    }
  }

  showError(err) {
    this.error.textContent = err.message;
    this.error.hidden = false;
    this.node.dataset.state = "error";
  }

  clear() {
    this.seq++;
    this.result.replaceChildren();
    this.explanation.replaceChildren();
    this.error.hidden = true;
    this.timing.textContent = "";
    this.node.dataset.state = "idle";
  }

  showTiming(answer, what) {
    const server = answer.timing.map((t) => `${t.name} ${t.dur.toFixed(1)} ms`).join(", ");
    this.timing.textContent = `${what} in ${answer.ms.toFixed(0)} ms` + (server ? ` · server: ${server}` : "");
  }

  post(path, body, query = "") {
    return call(`${this.base}/${path}${query}`, { method: "POST", ...body });
  }

  button(text, onClick, { secondary = false } = {}) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (secondary) b.className = "secondary";
    b.addEventListener("click", onClick);
    return b;
  }

  fileInput(text, accept, onFile) {
    const label = document.createElement("label");
    label.className = "button secondary";
    const input = document.createElement("input");
    input.type = "file";
    input.accept = accept;
    input.className = "visually-hidden";
    input.addEventListener("change", () => { if (input.files[0]) onFile(input.files[0]); input.value = ""; });
    label.append(text, input);
    return label;
  }
}

function fileBody(blob, name, fields = {}) {
  const form = new FormData();
  form.append("file", blob, name);
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  return { body: form };
}

function jsonBody(value) {
  return { body: JSON.stringify(value), headers: { "content-type": "application/json" } };
}

// ---- results -------------------------------------------------------------------------------------

function bars(labels) {
  const list = document.createElement("ol");
  list.className = "bars";
  list.setAttribute("aria-label", "Labels, most likely first");
  for (const { label, score } of labels) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    li.querySelector(".label").textContent = label;
    li.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    li.querySelector(".value").textContent = `${(score * 100).toFixed(1)}%`;
    list.appendChild(li);
  }
  return list;
}

function notes(list) {
  const p = document.createElement("p");
  p.className = "meta";
  p.textContent = list && list.length ? `Server notes: ${list.join("; ")}` : "";
  return p;
}

function scoreColor(score, scale) {
  const a = Math.min(1, Math.abs(score) / (scale || 1)) * 0.75;
  return `rgba(var(${score >= 0 ? "--pos" : "--neg"}), ${a.toFixed(3)})`;
}

function explainButton(ui, send, render) {
  if (!page.explain) return null;
  return ui.button("Explain", () => {
    const body = send();
    if (!body) return;
    ui.explanation.textContent = "Explaining… (many model evaluations at low priority)";
    ui.run(() => ui.post("explain", body), (answer) => render(answer), { explanation: true });
  }, { secondary: true });
}

function explanationTitle(answer) {
  const p = document.createElement("p");
  p.className = "meta";
  p.textContent = `Why: ${answer.explained} (${answer.method}, ${answer.evaluations} evaluations). ` +
    "Red pushed towards it, blue away from it.";
  return p;
}

// ---- image: draw, upload, drop, paste ------------------------------------------------------------

let activeImage = null;

function imageWidget(ui) {
  const wrap = document.createElement("div");
  wrap.className = "draw";
  const pad = document.createElement("div");
  pad.className = "pad";
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 280;
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Drawing area for ${ui.model.name}: draw with a mouse, finger or pen, or drop or paste an image`);
  pad.appendChild(canvas);
  const heat = document.createElement("img");
  heat.className = "heat";
  heat.alt = "Explanation heatmap";
  heat.hidden = true;
  wrap.append(pad, heat);
  const ctx = canvas.getContext("2d", { alpha: false });  // opaque: the PNG needs no compositing
  const state = { blob: null, name: "drawing.png", drawn: false };
  const blank = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    state.blob = null;
    state.drawn = false;
    heat.hidden = true;
  };
  blank();

  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (state.blob) blank();  // drawing over an uploaded picture starts afresh
    activeImage = send;
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(last, last, e.pressure);
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    stroke(last, p, e.pressure);
    last = p;
  });
  const end = () => { if (last) { last = null; state.drawn = true; send(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  function stroke(a, b, pressure) {
    ctx.strokeStyle = "#111";
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = 20 * (pressure > 0 && pressure !== 0.5 ? 0.6 + pressure * 0.8 : 1);
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  }

  async function useFile(file) {
    activeImage = send;
    state.blob = file;
    state.name = file.name || "pasted.png";
    state.drawn = false;
    heat.hidden = true;
    try {
      const bitmap = await createImageBitmap(file);
      const s = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(bitmap, (canvas.width - bitmap.width * s) / 2, (canvas.height - bitmap.height * s) / 2,
        bitmap.width * s, bitmap.height * s);
    } catch {
      ctx.fillStyle = "#fff";  // not an image the browser can show: the server says what is wrong
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    send();
  }
  pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("dragover"); });
  pad.addEventListener("dragleave", () => pad.classList.remove("dragover"));
  pad.addEventListener("drop", (e) => {
    e.preventDefault();
    pad.classList.remove("dragover");
    const file = e.dataTransfer.files[0];
    if (file) useFile(file);
  });
  send.useFile = useFile;
  canvas.addEventListener("focus", () => { activeImage = send; });

  function payload() {
    return new Promise((resolve) => {
      if (state.blob) resolve(state.blob);
      else canvas.toBlob(resolve, "image/png");
    });
  }
  async function send() {
    if (!state.blob && !state.drawn) return;
    ui.node.dataset.state = "busy";  // at once: the PNG is made asynchronously
    const blob = await payload();
    const anomaly = ui.model.task === "anomaly-detection";
    const fields = anomaly ? { return_reconstruction: true } : { top_k: 5 };
    ui.run(() => ui.post("predict", fileBody(blob, state.name, fields)),
      (body) => (anomaly ? renderAnomaly(ui, body) : ui.result.replaceChildren(bars(body.predictions[0].labels),
        notes(body.predictions[0].notes))));
  }

  const controls = document.createElement("div");
  controls.className = "row";
  controls.append(
    ui.button(ui.model.task === "anomaly-detection" ? "Check" : "Classify", send),
    ui.button("Clear", () => { blank(); ui.clear(); }, { secondary: true }),
    ui.fileInput("Upload image", "image/*", useFile),
  );
  if (page.explain && ui.model.task === "image-classification") {
    controls.appendChild(ui.button("Explain", async () => {
      if (!state.blob && !state.drawn) return;
      const blob = await payload();
      ui.explanation.textContent = "Explaining… (many model evaluations at low priority)";
      ui.run(() => ui.post("explain", fileBody(blob, state.name)), (answer) => {
        heat.src = `data:image/png;base64,${answer.heatmap_png}`;
        heat.hidden = false;
        ui.explanation.replaceChildren(explanationTitle(answer));
      }, { explanation: true });
    }, { secondary: true }));
  }
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Draw a digit (it is sent when you lift the pen), or upload, drop or paste an image.";
  ui.widget.append(wrap, controls, hint);
  if (!activeImage) activeImage = send;
}

function renderAnomaly(ui, body) {
  const p = body.predictions[0];
  const verdict = document.createElement("p");
  verdict.className = "transcript";
  verdict.textContent = `${p.is_anomaly ? "Anomalous" : "Normal"} — score ${p.score.toFixed(4)} (threshold ${p.threshold.toFixed(4)})`;
  const gallery = document.createElement("div");
  gallery.className = "gallery";
  for (const [key, caption] of [["input", "input"], ["reconstruction", "reconstruction"], ["error_map", "error"]]) {
    if (!p[key]) continue;
    const fig = document.createElement("figure");
    fig.innerHTML = `<img alt=""><figcaption></figcaption>`;
    fig.querySelector("img").src = `data:image/png;base64,${p[key]}`;
    fig.querySelector("img").alt = caption;
    fig.querySelector("figcaption").textContent = caption;
    gallery.appendChild(fig);
  }
  ui.result.replaceChildren(verdict, gallery, notes(p.notes));
}

function onPaste(e) {
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
  if (!item || !activeImage || !activeImage.useFile) return;
  e.preventDefault();
  activeImage.useFile(item.getAsFile());
}

// ---- text ----------------------------------------------------------------------------------------

function textWidget(ui) {
  const area = textArea(ui, "Text to classify", "what a lovely day, I love it");
  const send = () => {
    const text = area.value.trim();
    if (!text) return ui.showError(new Error("Type a sentence first."));
    ui.run(() => ui.post("predict", jsonBody({ text })), (body) => {
      const p = body.predictions[0];
      ui.result.replaceChildren(bars(p.labels), notes(p.truncated ? [`cut to ${p.tokens} tokens`] : []));
    });
  };
  area.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
  const controls = document.createElement("div");
  controls.className = "row";
  controls.appendChild(ui.button("Classify", send));
  const why = explainButton(ui, () => (area.value.trim() ? jsonBody({ text: area.value.trim() }) : null), (answer) => {
    const scale = Math.max(1e-9, ...answer.words.map((w) => Math.abs(w.score)));
    const para = document.createElement("p");
    para.className = "words";
    for (const w of answer.words) {
      const span = document.createElement("span");
      span.textContent = w.text;
      span.style.background = scoreColor(w.score, scale);
      span.title = `${w.score >= 0 ? "+" : ""}${w.score.toFixed(3)}`;
      para.append(span, " ");
    }
    ui.explanation.replaceChildren(explanationTitle(answer), para);
  });
  if (why) controls.appendChild(why);
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Ctrl+Enter sends.";
  ui.widget.append(area.parentElement, controls, hint);
}

function textArea(ui, labelText, value) {
  const label = document.createElement("label");
  label.className = "field";
  label.textContent = labelText;
  const area = document.createElement("textarea");
  area.value = value;
  area.name = `${ui.model.name}-text`;
  label.appendChild(area);
  return area;
}

function embeddingWidget(ui) {
  const area = textArea(ui, "Texts, one per line (two or more)", "what a lovely day\nwhat a wonderful morning\nthe train is late again");
  const send = () => {
    const texts = area.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (texts.length < 2) return ui.showError(new Error("Give two or more texts, one per line."));
    ui.run(() => ui.post("predict", jsonBody({ texts })), (body) => ui.result.replaceChildren(similarity(texts, body.embeddings)));
  };
  const controls = document.createElement("div");
  controls.className = "row";
  controls.appendChild(ui.button("Compare", send));
  ui.widget.append(area.parentElement, controls);
}

function similarity(texts, vectors) {
  const norm = vectors.map((v) => Math.hypot(...v) || 1);
  const cos = (i, j) => vectors[i].reduce((s, x, k) => s + x * vectors[j][k], 0) / (norm[i] * norm[j]);
  const table = document.createElement("table");
  table.className = "sim";
  const caption = document.createElement("caption");
  caption.className = "meta";
  caption.textContent = `Cosine similarity of ${vectors[0].length}-dimensional embeddings`;
  table.appendChild(caption);
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  texts.forEach((t, i) => { const th = document.createElement("th"); th.textContent = `#${i + 1}`; th.title = t; head.appendChild(th); });
  texts.forEach((t, i) => {
    const row = table.insertRow();
    const th = document.createElement("th");
    th.textContent = `#${i + 1} ${t}`;
    th.title = t;
    th.style.textAlign = "left";
    row.appendChild(th);
    texts.forEach((_, j) => {
      const c = cos(i, j);
      const td = row.insertCell();
      td.textContent = c.toFixed(2);
      td.style.background = scoreColor(c, 1);
    });
  });
  return table;
}

// ---- audio: record or upload ---------------------------------------------------------------------

const RECORDING_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4", "audio/webm"];

function audioWidget(ui) {
  const speech = ui.model.task === "speech-recognition";
  const limit = Number(ui.task.max_duration_s) || 30;
  const player = document.createElement("audio");
  player.controls = true;
  player.hidden = true;
  const status = document.createElement("span");
  status.className = "recording";
  status.setAttribute("aria-live", "polite");
  let current = null;  // {blob, name}
  let recorder = null;
  let stopAt = Infinity;

  const record = ui.button("Record", () => (recorder ? recorder.stop() : start()));
  record.setAttribute("aria-pressed", "false");
  async function start() {
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      return ui.showError(new Error("This browser cannot record here (it needs https or localhost); upload a file instead."));
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      return ui.showError(new Error(`No microphone: ${err.message}`));
    }
    const type = RECORDING_TYPES.find((t) => MediaRecorder.isTypeSupported(t)) || "";
    const chunks = [];
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((t) => t.stop());
      const mime = recorder.mimeType || type || "audio/webm";
      recorder = null;
      record.textContent = "Record";
      record.setAttribute("aria-pressed", "false");
      status.textContent = "";
      const blob = new Blob(chunks, { type: mime.split(";")[0] });
      const ext = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
      use(blob, `recording.${ext}`);
    });
    const began = performance.now();
    stopAt = began + (limit - 0.5) * 1000;
    recorder.start(250);
    record.textContent = "Stop";
    record.setAttribute("aria-pressed", "true");
    ui.node.dataset.recording = "0";
    const tick = () => {
      if (!recorder) return;
      const s = (performance.now() - began) / 1000;
      status.textContent = `● recording ${s.toFixed(1)} s (up to ${limit - 0.5} s)`;
      ui.node.dataset.recording = s.toFixed(2);
      if (performance.now() >= stopAt) recorder.stop();
      else setTimeout(tick, 100);
    };
    tick();
  }

  function use(blob, name) {
    current = { blob, name };
    player.src = URL.createObjectURL(blob);
    player.hidden = false;
    send();
  }

  function send() {
    if (!current) return;
    const fields = speech ? { return_timestamps: true } : { top_k: 5 };
    ui.run(() => ui.post("predict", fileBody(current.blob, current.name, fields)), (body) => {
      const p = body.predictions[0];
      if (!speech) return ui.result.replaceChildren(bars(p.labels), notes(p.notes));
      const meta = document.createElement("p");
      meta.className = "meta";
      meta.textContent = `${p.duration_s.toFixed(2)} s of audio · confidence ${(p.confidence * 100).toFixed(0)}%`;
      ui.result.replaceChildren(transcript(p, current), meta, notes(p.notes));
    });
  }

  const controls = document.createElement("div");
  controls.className = "row";
  controls.append(record, ui.fileInput("Upload recording", "audio/*,.wav,.flac,.ogg,.opus,.mp3,.m4a,.webm", (f) => use(f, f.name)), status);
  const why = explainButton(ui, () => (current ? fileBody(current.blob, current.name) : null), (answer) => {
    const scale = Math.max(1e-9, ...answer.curve.map((c) => Math.abs(c.score)));
    const curve = document.createElement("div");
    curve.className = "curve";
    curve.setAttribute("aria-label", "Score of each time window");
    for (const c of answer.curve) {
      const bar = document.createElement("div");
      bar.style.height = `${(Math.abs(c.score) / scale) * 100}%`;
      bar.style.background = scoreColor(c.score >= 0 ? scale : -scale, scale);
      bar.title = `${c.start_s.toFixed(2)}–${c.end_s.toFixed(2)} s: ${c.score.toFixed(3)}`;
      curve.appendChild(bar);
    }
    const words = document.createElement("p");
    words.className = "words";
    const wscale = Math.max(1e-9, ...answer.words.map((w) => Math.abs(w.score)));
    for (const w of answer.words) {
      const span = document.createElement("span");
      span.textContent = w.text;
      span.style.background = scoreColor(w.score, wscale);
      words.append(span, " ");
    }
    ui.explanation.replaceChildren(explanationTitle(answer), curve, words);
  });
  if (why) controls.appendChild(why);
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = speech
    ? "Record with the microphone or upload a recording (WAV, FLAC, Ogg, MP3, WebM, M4A). Click a word to hear it."
    : "Record with the microphone or upload a recording.";
  ui.widget.append(controls, player, hint);
}

function transcript(p, clip) {
  const para = document.createElement("p");
  para.className = "transcript";
  para.setAttribute("aria-label", "Transcript");
  para.dataset.text = p.text;
  if (!p.text) {
    const none = document.createElement("span");
    none.className = "empty";
    none.textContent = "(no words recognised)";
    para.appendChild(none);
    return para;
  }
  const words = p.words && p.words.length ? p.words : p.text.split(" ").map((text) => ({ text }));
  for (const w of words) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "word";
    b.textContent = w.text;
    if (w.start_s !== undefined) {
      b.title = `${w.start_s.toFixed(2)}–${w.end_s.toFixed(2)} s: click to hear it`;
      b.addEventListener("click", () => playSpan(clip, w.start_s, w.end_s, b));
    }
    para.appendChild(b);
  }
  return para;
}

// Word spans play from the decoded samples (Web Audio), not by seeking the <audio> element: a
// MediaRecorder WebM has no index, so browsers seek in it badly or not at all.
let audioContext = null;

async function playSpan(clip, start, end, button) {
  try {
    audioContext = audioContext || new AudioContext();
    if (!clip.decoded) clip.decoded = await audioContext.decodeAudioData(await clip.blob.arrayBuffer());
    const source = audioContext.createBufferSource();
    source.buffer = clip.decoded;
    source.connect(audioContext.destination);
    button.classList.add("playing");
    source.addEventListener("ended", () => button.classList.remove("playing"));
    const from = Math.max(0, start - 0.05);
    source.start(0, from, end + 0.05 - from);
  } catch {
    button.classList.remove("playing");  // a format this browser cannot decode: the player still plays it all
  }
}

// ---- image generation ----------------------------------------------------------------------------

function generationWidget(ui) {
  const labels = ui.task.labels || ui.model.labels || [];
  const row = document.createElement("div");
  row.className = "row";
  const boxes = labels.map((label, i) => {
    const l = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = String(i);
    box.checked = i < 3;
    l.append(box, ` ${label}`);
    row.appendChild(l);
    return box;
  });
  const count = document.createElement("input");
  count.type = "number";
  count.min = "1";
  count.max = "8";
  count.value = "4";
  const countLabel = document.createElement("label");
  countLabel.append("per label ", count);
  const seed = document.createElement("input");
  seed.type = "number";
  seed.min = "0";
  seed.value = "0";
  const seedLabel = document.createElement("label");
  seedLabel.append("seed ", seed);
  const send = () => {
    const chosen = boxes.filter((b) => b.checked).map((b) => Number(b.value));
    const body = { count: Number(count.value) || 1, seed: Number(seed.value) || 0 };
    if (chosen.length) body.labels = chosen;
    ui.run(() => ui.post("predict", jsonBody(body)), (answer) => {
      const gallery = document.createElement("div");
      gallery.className = "gallery";
      for (const image of answer.images) {
        const fig = document.createElement("figure");
        fig.innerHTML = `<img alt=""><figcaption></figcaption>`;
        fig.querySelector("img").src = `data:image/png;base64,${image.png}`;
        fig.querySelector("img").alt = `generated ${image.label ?? "image"}`;
        fig.querySelector("figcaption").textContent = image.label ?? "";
        gallery.appendChild(fig);
      }
      ui.result.replaceChildren(gallery);
    });
  };
  const controls = document.createElement("div");
  controls.className = "row";
  controls.append(countLabel, seedLabel, ui.button("Generate", send));
  ui.widget.append(row, controls);
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

main();
