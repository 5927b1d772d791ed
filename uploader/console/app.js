// The vidfarm web console: sign in with an API key, upload (tus, resumable), follow videos live,
// play and delete them, and watch the farm scale. Plain DOM, no framework; every piece of text from
// the API goes in with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "vidfarm.apiKey";
const TUS_ENDPOINT = "/v1/uploads";
const TUS_CHUNK_BYTES = 16 * 1024 * 1024;
const TERMINAL = new Set(["ready", "failed", "canceled"]);
// Each live stream holds one of the browser's six connections to this origin: follow a few videos
// live, and refresh the list now and then for the rest.
const MAX_STREAMS = 3;
const LIST_REFRESH_MS = 5000;
const FARM_POLL_MS = 1000;
const CHART_POINTS = 120;

const $ = (selector) => document.querySelector(selector);
let apiKey = sessionStorage.getItem(KEY_STORAGE);
let signedIn = false;   // false while a key is being tried: its 401 is the sign-in form's to show
let tusMaxSize = null;   // null: the API has no tus endpoint, uploads are plain POSTs
let tusAvailable = false;

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  return { Authorization: `Bearer ${apiKey}` };
}

// The API's errors are JSON: {"error": {"code", "message"}}.
function errorMessage(status, body) {
  try {
    const message = JSON.parse(body).error.message;
    if (message) return message;
  } catch { /* not our JSON: a proxy's page, say */ }
  return `the API answered HTTP ${status}`;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...options.headers, ...authHeaders() } });
  } catch (error) {
    throw new ApiError(0, `cannot reach the API (${error.message})`);
  }
  if (!response.ok) {
    const error = new ApiError(response.status, errorMessage(response.status, await response.text()));
    if (response.status === 401 && signedIn) signOut("Your API key is no longer accepted: sign in again.");
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function notify(message) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.hidden = !message;
}

// ---- signing in ----------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const error = $("#sign-in-error");
  error.hidden = true;
  apiKey = $("#api-key").value.trim();
  try {
    await api("/v1/videos?limit=1");
  } catch (failure) {
    apiKey = null;
    error.textContent = failure.status === 401
      ? `That API key was not accepted (${failure.message}). Check it and try again.`
      : `Could not sign in: ${failure.message}.`;
    error.hidden = false;
    $("#api-key").focus();
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  $("#api-key").value = "";
  start();
}

function signOut(message = "") {
  apiKey = null;
  signedIn = false;
  sessionStorage.removeItem(KEY_STORAGE);
  for (const stream of streams.values()) stream.abort();
  streams.clear();
  clearInterval(timers.farm);
  clearInterval(timers.list);
  closePlayer();
  $("#video-list").replaceChildren();
  rows.clear();
  show();
  notify(message);
}

const timers = { farm: 0, list: 0 };

async function start() {
  signedIn = true;
  notify("");
  show();
  await detectTus();
  loadVideos();
  pollFarm();
  timers.farm = setInterval(pollFarm, FARM_POLL_MS);
  timers.list = setInterval(() => {
    if ([...rows.values()].some((row) => !TERMINAL.has(row.video.status) && !streams.has(row.video.id))) loadVideos();
  }, LIST_REFRESH_MS);
}

// Which view: the sign-in form without a key, else #videos or #farm from the address.
function show() {
  const view = !apiKey ? "sign-in" : location.hash === "#farm" ? "farm" : "videos";
  for (const id of ["sign-in", "videos", "farm"]) $(`#${id}`).hidden = id !== view;
  $("#nav").hidden = !apiKey;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.hash === `#${view}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view === "sign-in") $("#api-key").focus();
}

// ---- uploading -----------------------------------------------------------------------------

// tus when the API advertises it (OPTIONS answers Tus-Version), else a multipart POST.
async function detectTus() {
  try {
    const response = await fetch(TUS_ENDPOINT, { method: "OPTIONS", headers: authHeaders() });
    tusAvailable = response.ok && response.headers.has("Tus-Version") && typeof tus !== "undefined";
    tusMaxSize = Number(response.headers.get("Tus-Max-Size")) || null;
  } catch {
    tusAvailable = false;
  }
  $("#upload-mode").textContent = tusAvailable
    ? "Resumable uploads: pause and resume at will, or after a dropped connection."
    : "Uploads are sent in one request (this API has no resumable upload endpoint).";
}

function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i += 1; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function uploadFiles(files) {
  for (const file of files) uploadFile(file);
}

function uploadFile(file) {
  const row = $("#upload-row").content.firstElementChild.cloneNode(true);
  $("#uploads").prepend(row);
  const part = (selector) => row.querySelector(selector);
  part(".name").textContent = file.name;
  const state = (status, meta) => {
    part(".status").textContent = status;
    part(".status").dataset.status = status;
    if (meta !== undefined) part(".meta").textContent = meta;
  };
  const progress = (sent) => {
    part("progress").value = file.size ? sent / file.size : 1;
    state("uploading", `${formatBytes(sent)} of ${formatBytes(file.size)} (${Math.floor(100 * sent / (file.size || 1))}%)`);
  };
  const finish = (error) => {
    part(".pause").hidden = part(".resume").hidden = true;
    part(".cancel").textContent = "Dismiss";
    part(".cancel").onclick = () => row.remove();
    if (error) {
      state("failed", "");
      part("progress").hidden = true;
      part(".error").textContent = `${file.name}: ${error}`;
      part(".error").hidden = false;
    } else {
      state("uploaded");
      part("progress").value = 1;
    }
  };
  const accepted = (videoId) => {
    finish();
    loadVideos().then(() => follow(videoId));
  };

  if (tusAvailable && tusMaxSize && file.size > tusMaxSize) {
    finish(`the file is too large: ${formatBytes(file.size)}, the limit is ${formatBytes(tusMaxSize)}`);
  } else if (tusAvailable) {
    tusUpload(file, { row, progress, finish, accepted });
  } else {
    postUpload(file, { row, progress, finish, accepted });
  }
}

function tusUpload(file, { row, progress, finish, accepted }) {
  let videoId = null;
  const upload = new tus.Upload(file, {
    endpoint: TUS_ENDPOINT,
    headers: authHeaders(),
    metadata: { filename: file.name, filetype: file.type },
    chunkSize: TUS_CHUNK_BYTES,
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
    removeFingerprintOnSuccess: true,
    onAfterResponse(request, response) {
      videoId = response.getHeader("Vidfarm-Video-Id") || videoId;
    },
    onProgress: progress,
    // 4xx answers are final (too large, not a video, wrong key), except a 409 offset mismatch
    // and 423 lock, which a retry resolves by asking for the offset again.
    onShouldRetry(error) {
      const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
      return !(status >= 400 && status < 500) || status === 409 || status === 423;
    },
    onError(error) {
      const response = error.originalResponse;
      finish(response ? errorMessage(response.getStatus(), response.getBody()) : error.message);
    },
    onSuccess() {
      accepted(videoId);
    },
  });
  const pause = row.querySelector(".pause");
  const resume = row.querySelector(".resume");
  pause.onclick = () => {
    upload.abort();
    pause.hidden = true;
    resume.hidden = false;
    row.querySelector(".status").textContent = "paused";
    resume.focus();
  };
  resume.onclick = () => {
    upload.start();
    resume.hidden = true;
    pause.hidden = false;
    pause.focus();
  };
  row.querySelector(".cancel").onclick = () => {
    upload.abort(true).catch(() => {}); // terminate: the server drops what it received
    row.remove();
  };
  // The same file again after a reload or a dropped tab resumes where it stopped.
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
}

// Without tus: one multipart POST, with the browser's upload progress; no pause.
function postUpload(file, { row, progress, finish, accepted }) {
  const request = new XMLHttpRequest();
  const body = new FormData();
  body.append("file", file, file.name);
  request.open("POST", "/v1/videos");
  request.setRequestHeader("Authorization", authHeaders().Authorization);
  // The multipart body is a little larger than the file: scale to the file's bytes.
  request.upload.onprogress = (event) =>
    progress(event.lengthComputable ? Math.min(file.size, (event.loaded * file.size) / event.total) : 0);
  request.onload = () => {
    if (request.status === 201) accepted(JSON.parse(request.responseText).id);
    else finish(errorMessage(request.status, request.responseText));
  };
  request.onerror = () => finish("the upload was interrupted (network error, or the API refused it mid-way)");
  row.querySelector(".pause").hidden = true;
  row.querySelector(".cancel").onclick = () => {
    request.abort();
    row.remove();
  };
  request.send(body);
}

// ---- the video list ------------------------------------------------------------------------

const rows = new Map(); // video id -> {element, video}
const streams = new Map(); // video id -> AbortController of its live stream

async function loadVideos() {
  let page;
  try {
    page = await api("/v1/videos?limit=50");
  } catch (error) {
    notify(`Could not load the videos: ${error.message}.`);
    return;
  }
  notify("");
  const list = $("#video-list");
  const seen = new Set();
  for (const video of page.items) {
    seen.add(video.id);
    const row = rows.get(video.id) || addRow(video);
    list.append(row.element); // newest first, as the API lists them
    renderVideo(row, video);
    if (!TERMINAL.has(video.status)) follow(video.id);
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) { row.element.remove(); rows.delete(id); }
  }
  $("#no-videos").hidden = rows.size > 0;
}

function addRow(video) {
  const element = $("#video-row").content.firstElementChild.cloneNode(true);
  element.dataset.id = video.id;
  const row = { element, video };
  element.querySelector(".play").onclick = () => openPlayer(row.video);
  element.querySelector(".delete").onclick = () => deleteVideo(row);
  rows.set(video.id, row);
  return row;
}

function describeSource(source) {
  const parts = [];
  if (source.width) parts.push(`${source.width}×${source.height}`);
  if (source.duration_s) parts.push(`${source.duration_s.toFixed(1)} s`);
  if (source.size_bytes) parts.push(formatBytes(source.size_bytes));
  return parts.join(" · ");
}

function renderVideo(row, video) {
  row.video = { ...row.video, ...video };
  const v = row.video;
  const part = (selector) => row.element.querySelector(selector);
  part(".name").textContent = (v.source && v.source.filename) || v.id;
  part(".status").textContent = v.status;
  part(".status").dataset.status = v.status;
  const active = !TERMINAL.has(v.status);
  part("progress").hidden = !active;
  part("progress").value = v.progress || 0;
  const created = v.created_at ? new Date(v.created_at).toLocaleString() : "";
  const percent = active ? ` · ${Math.floor(100 * (v.progress || 0))}%` : "";
  part(".meta").textContent = [v.source ? describeSource(v.source) : "", created].filter(Boolean).join(" · ") + percent;
  part(".error").textContent = v.error ? `${v.error.message} (${v.error.code})` : "";
  part(".error").hidden = !v.error;
  // Playable before ready: HLS grows while the rest is encoded (`playback` appears with `playable_at`).
  part(".play").hidden = !(v.status === "ready" || (v.status === "processing" && v.playback));
  renderRenditions(part(".renditions"), v.status === "ready" ? v.renditions || [] : []);
}

// Each rendition with what it looks like next to the source (VMAF, its 5th percentile, PSNR), or
// "not scored" where the worker had no scorer.
function renderRenditions(list, renditions) {
  list.replaceChildren(...renditions.map((r) => {
    const item = document.createElement("li");
    const size = `${r.name} · ${r.width}×${r.height} · ${r.bitrate_kbps} kb/s`;
    const q = r.quality;
    item.textContent = q
      ? `${size} · VMAF ${q.vmaf_mean.toFixed(1)} (5th percentile ${q.vmaf_p5.toFixed(1)}) · PSNR ${q.psnr_db.toFixed(1)} dB`
      : `${size} · not scored`;
    if (q) item.title = `${q.frames_scored} frames scored`;
    else item.className = "not-scored";
    return item;
  }));
  list.hidden = renditions.length === 0;
}

// Server-Sent Events read with fetch, so the key goes in the Authorization header (EventSource
// cannot send one, and a key in the URL would end up in logs).
async function follow(id) {
  if (streams.has(id) || streams.size >= MAX_STREAMS || !apiKey) return;
  const controller = new AbortController();
  streams.set(id, controller);
  try {
    const response = await fetch(`/v1/videos/${id}/events`, { headers: authHeaders(), signal: controller.signal });
    if (!response.ok) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onEvent(id, buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch { /* aborted, or the connection dropped: the list refresh picks the video up again */ }
  finally {
    if (streams.get(id) === controller) streams.delete(id);
  }
  const row = rows.get(id);
  if (row && apiKey && !controller.signal.aborted) {
    try {
      renderVideo(row, await api(`/v1/videos/${id}`)); // the whole document: renditions, playback
    } catch { /* deleted meanwhile */ }
  }
}

function onEvent(id, block) {
  const data = block.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim());
  const row = rows.get(id);
  if (!data.length || !row) return;
  const event = JSON.parse(data.join("\n"));
  const update = {};
  for (const field of ["status", "progress", "error", "playable_at", "playback"]) {
    if (field in event) update[field] = event[field];
  }
  renderVideo(row, update);
}

async function deleteVideo(row) {
  const name = row.element.querySelector(".name").textContent;
  if (!confirm(`Delete ${name}? Its renditions are removed for good.`)) return;
  try {
    await api(`/v1/videos/${row.video.id}`, { method: "DELETE" });
  } catch (error) {
    notify(`Could not delete ${name}: ${error.message}.`);
    return;
  }
  if ($("#player").dataset.id === row.video.id) closePlayer();
  streams.get(row.video.id)?.abort();
  row.element.remove();
  rows.delete(row.video.id);
  $("#no-videos").hidden = rows.size > 0;
  $("#refresh").focus();
}

// ---- the player ----------------------------------------------------------------------------

let hls = null;
let objectUrl = null;

async function openPlayer(video) {
  closePlayer();
  const player = $("#player");
  const element = $("#video");
  player.dataset.id = video.id;
  player.hidden = false;
  $("#player-title").textContent = video.source.filename;
  const info = $("#player-info");
  if (video.playback && typeof Hls !== "undefined" && Hls.isSupported()) {
    info.textContent = video.status === "ready"
      ? "HLS (adaptive): every rendition, the player picks one to suit the connection."
      : "HLS while processing: it plays what is encoded so far, and on to the end as the rest arrives.";
    hls = new Hls();
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (data.fatal) info.textContent = `Playback failed: ${data.details}.`;
    });
    hls.loadSource(video.playback.hls);
    hls.attachMedia(element);
  } else if (video.playback && element.canPlayType("application/vnd.apple.mpegurl")) {
    info.textContent = "HLS, played by the browser itself.";
    element.src = video.playback.hls;
  } else if (video.renditions.length) {
    // Rendition downloads need the key in a header, which a <video src> cannot send: fetch it.
    const rendition = video.renditions[0];
    info.textContent = `Loading the ${rendition.name} MP4 rendition…`;
    try {
      const response = await fetch(rendition.url, { headers: authHeaders() });
      if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
      objectUrl = URL.createObjectURL(await response.blob());
    } catch (error) {
      info.textContent = `Could not load the rendition: ${error.message}.`;
      return;
    }
    if (player.dataset.id !== video.id) return; // closed or replaced meanwhile
    info.textContent = `MP4 rendition ${rendition.name} (${rendition.width}×${rendition.height}).`;
    element.src = objectUrl;
  } else {
    info.textContent = "This video has nothing to play.";
    return;
  }
  player.scrollIntoView({ block: "nearest" });
  element.focus();
  element.play().catch(() => { /* autoplay refused: the controls are there */ });
}

function closePlayer() {
  const element = $("#video");
  if (hls) { hls.destroy(); hls = null; }
  element.pause();
  element.removeAttribute("src");
  element.load();
  if (objectUrl) { URL.revokeObjectURL(objectUrl); objectUrl = null; }
  $("#player").hidden = true;
  delete $("#player").dataset.id;
}

// ---- the farm ------------------------------------------------------------------------------

const samples = []; // {queued, running, replicas, desired}, one per poll

async function pollFarm() {
  let farm;
  try {
    farm = await api("/v1/farm");
  } catch (error) {
    $("#farm-updated").textContent = `Could not read the farm: ${error.message}.`;
    return;
  }
  const pools = Object.entries((farm.autoscaler && farm.autoscaler.pools) || {});
  const queues = Object.entries(farm.queues);
  const sum = (values) => values.reduce((total, value) => total + (value || 0), 0);
  samples.push({
    queued: sum(queues.map(([, q]) => q.queued)),
    running: sum(queues.map(([, q]) => q.running)),
    replicas: pools.length ? sum(pools.map(([, p]) => p.current)) : farm.workers.length,
    desired: pools.length ? sum(pools.map(([, p]) => p.desired)) : null,
  });
  if (samples.length > CHART_POINTS) samples.shift();

  fillTable("#pools", pools.map(([name, p]) => {
    const last = p.last_decision;
    return [name, (p.queues || []).join(", "), p.min, p.max, p.desired ?? "–", p.current ?? "–",
      last ? `${last.direction}: ${last.message || last.reason}` : "–"];
  }), "No autoscaler is reporting: the workers below run without one.");
  fillTable("#queues", queues.map(([name, q]) => [name, q.queued, q.running, q.failed]), "No queues.");
  fillTable("#workers", farm.workers.map((w) => [w.name, w.pool || "–", w.encoder, w.state, transcoding(w)]),
    "No workers are running.");
  drawChart();
  $("#farm-updated").textContent = `Updated ${new Date().toLocaleTimeString()}, every ${FARM_POLL_MS / 1000} s.`;
}

function transcoding(worker) {
  if (!worker.video_id) return "–";
  const row = rows.get(worker.video_id);
  return row && row.video.source ? `${row.video.source.filename} (${worker.video_id.slice(0, 8)})` : worker.video_id;
}

function fillTable(selector, cells, empty) {
  const body = document.querySelector(`${selector} tbody`);
  const labels = [...document.querySelectorAll(`${selector} th`)].map((th) => th.textContent);
  const trs = cells.map((row) => {
    const tr = document.createElement("tr");
    row.forEach((value, i) => {
      const td = tr.insertCell();
      td.textContent = String(value);
      td.dataset.label = labels[i]; // the column's name, shown beside the value at phone width
    });
    return tr;
  });
  if (!trs.length) {
    const tr = document.createElement("tr");
    const td = tr.insertCell();
    td.colSpan = labels.length;
    td.className = "hint";
    td.textContent = empty;
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}

// A line chart of the last CHART_POINTS samples, drawn as SVG polylines.
function drawChart() {
  const svg = $("#chart svg");
  const [width, height, pad] = [600, 180, 24];
  const top = Math.max(1, ...samples.flatMap((s) => [s.queued, s.running, s.replicas, s.desired ?? 0]));
  const x = (i) => pad + (i * (width - 2 * pad)) / (CHART_POINTS - 1);
  const y = (value) => height - pad - (value * (height - 2 * pad)) / top;
  const ns = "http://www.w3.org/2000/svg";
  const shape = (name, attributes, text) => {
    const node = document.createElementNS(ns, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const nodes = [];
  for (const value of [0, top]) {
    nodes.push(shape("line", { x1: pad, x2: width - pad, y1: y(value), y2: y(value), class: "grid" }));
    nodes.push(shape("text", { x: pad - 6, y: y(value) + 5, class: "axis" }, String(value)));
  }
  const span = `${(CHART_POINTS * FARM_POLL_MS) / 60000} min ago`;
  nodes.push(shape("text", { x: pad, y: height - 4, class: "axis start" }, span));
  nodes.push(shape("text", { x: width - pad, y: height - 4, class: "axis" }, "now"));
  const offset = CHART_POINTS - samples.length; // newest sample at the right edge
  for (const series of ["queued", "running", "replicas", "desired"]) {
    const points = samples.map((s, i) => (s[series] == null ? null : `${x(offset + i)},${y(s[series])}`)).filter(Boolean);
    if (points.length) nodes.push(shape("polyline", { points: points.join(" "), class: `line ${series}` }));
  }
  svg.replaceChildren(...nodes);
  const now = samples[samples.length - 1];
  $("#chart-caption").textContent = now
    ? `Now: ${now.queued} queued, ${now.running} running, ${now.replicas} replicas${now.desired == null ? "" : `, ${now.desired} desired`}.`
    : "";
}

// ---- wiring --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#refresh").addEventListener("click", loadVideos);
  $("#player-close").addEventListener("click", closePlayer);
  $("#file").addEventListener("change", (event) => {
    uploadFiles(event.target.files);
    event.target.value = ""; // the same file may be chosen again
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadFiles(event.dataTransfer.files);
  });
  window.addEventListener("hashchange", show);
  if (typeof tus === "undefined" || typeof Hls === "undefined") {
    notify("The console's libraries are missing (uploader/console/vendor): run `make console`.");
  }
  if (apiKey) start();
  else show();
});
