// Tessera's page: choose or drop an image, segment it through the service's own API, show the
// result over the image, the class areas and downloads. Images above a size go through a job
// (POST /jobs) with a progress bar and a cancel button. Plain JavaScript, no build step, nothing
// loaded from elsewhere: the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
let config = null;     // GET /ui/config.json: classes, palette, foreground classes, job limits
let current = null;    // the chosen File
let lastBlobs = [];    // object URLs to release on the next run
let activeJob = null;  // {id, timer}

function showError(error, detail) {
  const box = $("error");
  box.textContent = detail ? `${error}: ${detail}` : error;
  box.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }
function setStatus(text) { $("status").textContent = text; }

async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return [body.error, body.detail || ""];
  } catch (_) { /* not JSON */ }
  return [`HTTP ${response.status}`, response.statusText];
}

function options() {
  const params = new URLSearchParams();
  if ($("tta").value !== "none") params.set("tta", $("tta").value);
  if (!$("threshold-group").hidden && !$("use-model-threshold").checked) params.set("threshold", $("threshold").value);
  return params;
}

async function segment(file, extra) {
  const params = options();
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  const form = new FormData();
  form.append("image", file, file.name);
  const response = await fetch(`/segment?${params}`, { method: "POST", body: form });
  if (!response.ok) {
    const [error, detail] = await apiError(response);
    throw Object.assign(new Error(detail), { apiError: error, apiDetail: detail });
  }
  return response;
}

function keep(blob) { const url = URL.createObjectURL(blob); lastBlobs.push(url); return url; }

async function decodeInBrowser(file) {
  try { return await createImageBitmap(file); } catch (_) { return null; }  // TIFF: the browser cannot
}

function drawOn(canvas, bitmap) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0);
  return context;
}

async function showLayer(blob, kind) {
  const bitmap = await createImageBitmap(blob);
  const context = drawOn($("overlay-layer"), bitmap);
  if (kind === "mask") {  // class indices -> palette colours
    const image = context.getImageData(0, 0, bitmap.width, bitmap.height);
    const pixels = image.data;
    for (let i = 0; i < pixels.length; i += 4) {
      const colour = config.palette[pixels[i] % config.palette.length];
      pixels[i] = colour[0]; pixels[i + 1] = colour[1]; pixels[i + 2] = colour[2]; pixels[i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
  }
}

function fillAreas(body, unit) {
  const rows = body.classes.map((c) => {
    const colour = config.palette[c.class % config.palette.length];
    const tinted = config.foreground.includes(c.class) ? " (tinted)" : "";
    return `<tr data-class="${c.class}" data-pixels="${c.pixels}" data-area="${c.area}">` +
      `<th scope="row"><span class="swatch" style="background: rgb(${colour.join(",")})"></span>${escapeHtml(c.class_name)}${tinted}</th>` +
      `<td class="num">${c.pixels.toLocaleString()}</td><td class="num">${(100 * c.fraction).toFixed(2)}%</td>` +
      `<td class="num">${formatArea(c.area)} ${unit}</td></tr>`;
  });
  $("areas").querySelector("tbody").innerHTML = rows.join("");
  $("areas-caption").textContent = `${body.size[1]} × ${body.size[0]} pixels` +
    (body.orientation && body.orientation !== 1 ? `, EXIF orientation ${body.orientation} applied` : "");
}

function formatArea(area) { return Number.isInteger(area) ? area.toLocaleString() : area.toPrecision(6); }
function escapeHtml(text) { return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }

async function downloadFrom(extra, name, pick) {
  clearError();
  try {
    const response = await segment(current, extra);
    const blob = pick ? new Blob([JSON.stringify(pick(await response.json()))], { type: "application/geo+json" }) : await response.blob();
    const link = document.createElement("a");
    link.href = keep(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
  } catch (error) { showError(error.apiError || "error", error.apiDetail || String(error)); }
}

async function runDirect(file, bitmap) {
  const pixelSize = $("pixel-size").value || "1";
  setStatus("Segmenting…");
  const shown = $("show").value;
  const layerRequest = shown === "overlay" ? { output: "overlay" }
    : shown === "mask" ? { output: "mask" }
    : { output: "probabilities", probability_format: "png", class_index: $("prob-class").value };
  const layer = await (await segment(file, layerRequest)).blob();
  const stats = await (await segment(file, { output: "json", pixel_size: pixelSize })).json();
  const mask = shown === "mask" ? layer : await (await segment(file, { output: "mask" })).blob();
  const overlay = shown === "overlay" ? layer : await (await segment(file, { output: "overlay" })).blob();
  const stage = $("stage");
  stage.classList.toggle("no-base", !bitmap);
  if (bitmap) drawOn($("base-layer"), bitmap);
  await showLayer(layer, shown);
  applyOpacity();
  stage.hidden = false;
  $("view-controls").hidden = false;
  fillAreas(stats, pixelSize === "1" ? "px²" : "units²");
  $("download-mask").href = keep(mask);
  $("download-overlay").href = keep(overlay);
  $("results").hidden = false;
  setStatus(`Done: ${stats.size[1]} × ${stats.size[0]} pixels.`);
  document.body.dataset.state = "done";
}

function describeJob(job) {
  const parts = [];
  if (job.tiles_total) parts.push(`${job.tiles_done} / ${job.tiles_total} tiles`);
  if (job.pixels_per_second) parts.push(`${(job.pixels_per_second / 1e6).toFixed(2)} Mpx/s`);
  if (job.eta_seconds !== null && job.eta_seconds !== undefined && job.status === "in_progress") parts.push(`about ${Math.ceil(job.eta_seconds)} s left`);
  return parts.join(" · ");
}

function uploadJob(file) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    const params = options();
    params.set("format", "tiff");
    request.open("POST", `/jobs?${params}`);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        $("job-progress").value = event.loaded / event.total;
        $("job-line").textContent = `Uploading: ${Math.round(100 * event.loaded / event.total)}%`;
      }
    };
    request.onload = () => resolve(request);
    request.onerror = () => reject(new Error("the upload failed (connection closed)"));
    const form = new FormData();
    form.append("image", file, file.name);
    request.send(form);
  });
}

async function runJob(file) {
  $("job").hidden = false;
  $("job-download").hidden = true;
  $("job-cancel").hidden = false;
  $("job-line").textContent = "Uploading…";
  const request = await uploadJob(file);
  let body = {};
  try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
  if (request.status !== 202) {
    $("job").hidden = true;
    const retry = request.getResponseHeader("Retry-After");
    showError(body.error || `HTTP ${request.status}`, (body.detail || "") + (retry ? ` Try again in ${retry} s.` : ""));
    return;
  }
  activeJob = { id: body.job_id, timer: null };
  pollJob(body);
}

function pollJob(job) {
  $("job-progress").value = job.progress || 0;
  $("job-line").textContent = job.status === "in_progress" ? `Job running: ${job.stage}` : `Job ${job.status.replace("_", " ")}`;
  $("job-numbers").textContent = describeJob(job);
  if (job.status === "completed") {
    $("job-cancel").hidden = true;
    $("job-download").href = job.result_url;
    $("job-download").setAttribute("download", job.filename || "labels.tif");
    $("job-download").hidden = false;
    $("job-progress").value = 1;
    setStatus(`Job done: ${job.size[1]} × ${job.size[0]} pixels.`);
    document.body.dataset.state = "done";
    activeJob = null;
    return;
  }
  if (job.status === "failed" || job.status === "cancelled") {
    $("job-cancel").hidden = true;
    if (job.error) showError(job.error.error, job.error.detail);
    setStatus(job.status === "cancelled" ? "Job cancelled; its partial output was deleted." : "Job failed.");
    document.body.dataset.state = job.status;
    activeJob = null;
    return;
  }
  activeJob.timer = setTimeout(async () => {
    const response = await fetch(`/jobs/${job.job_id}`);
    if (!response.ok) { const [e, d] = await apiError(response); showError(e, d); activeJob = null; return; }
    pollJob(await response.json());
  }, 500);
}

async function cancelJob() {
  if (!activeJob) return;
  const response = await fetch(`/jobs/${activeJob.id}/cancel`, { method: "POST" });
  if (!response.ok) { const [e, d] = await apiError(response); showError(e, d); }
  $("job-line").textContent = "Cancelling after the current tiles…";
}

function isBig(file, bitmap) {
  const bytes = Number(query.get("job_bytes") || config.job_bytes);
  const pixels = Number(query.get("job_pixels") || config.job_pixels);
  if (file.size > bytes) return true;
  return bitmap ? bitmap.width * bitmap.height > pixels : false;
}

async function run() {
  if (!current) return;
  clearError();
  lastBlobs.forEach((url) => URL.revokeObjectURL(url));
  lastBlobs = [];
  $("results").hidden = true; $("stage").hidden = true; $("view-controls").hidden = true; $("job").hidden = true;
  document.body.dataset.state = "running";
  $("run").disabled = true;
  try {
    const bitmap = await decodeInBrowser(current);
    if (isBig(current, bitmap)) await runJob(current);
    else await runDirect(current, bitmap);
  } catch (error) {
    showError(error.apiError || "error", error.apiDetail || String(error.message || error));
    setStatus("");
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
}

function choose(file) {
  if (!file) return;
  current = file;
  $("file-line").textContent = `${file.name} (${(file.size / 1024).toFixed(1)} KiB)`;
  $("run").disabled = false;
  run();
}

function applyOpacity() {
  const value = $("opacity").value;
  $("overlay-layer").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value}%`;
}

async function init() {
  try {
    const response = await fetch("/ui/config.json");
    config = await response.json();
  } catch (error) {
    showError("service unreachable", String(error));
    return;
  }
  const classes = config.classes.map((name, k) => `${k} ${name}`).join(", ");
  $("model-line").textContent = `Model: ${config.bundle} · classes ${classes} · tinted: ${config.foreground.map((k) => config.classes[k]).join(", ") || "none"}`;
  if (config.classes.length === 2) {
    $("threshold-group").hidden = false;
    $("model-threshold").textContent = config.threshold === null ? "(argmax)" : `(${config.threshold})`;
    if (config.threshold !== null) { $("threshold").value = config.threshold; $("threshold-value").textContent = Number(config.threshold).toFixed(2); }
  }
  $("prob-class").innerHTML = config.classes.map((name, k) => `<option value="${k}">${k} ${escapeHtml(name)}</option>`).join("");
  $("prob-class").value = String(config.classes.length - 1);
  document.body.dataset.state = "ready";
}

$("file-input").addEventListener("change", (event) => choose(event.target.files[0]));
$("run").addEventListener("click", run);
$("opacity").addEventListener("input", applyOpacity);
$("use-model-threshold").addEventListener("change", (event) => { $("threshold").disabled = event.target.checked; });
$("threshold").addEventListener("input", (event) => { $("threshold-value").textContent = Number(event.target.value).toFixed(2); });
$("show").addEventListener("change", (event) => {
  const probability = event.target.value === "probability";
  $("prob-class").hidden = !probability;
  $("prob-class-label").hidden = !probability;
});
$("job-cancel").addEventListener("click", cancelJob);
$("download-probabilities").addEventListener("click", () => downloadFrom({ output: "probabilities", probability_format: "tiff" }, "probabilities.tif"));
$("download-geojson").addEventListener("click", () => downloadFrom({ output: "json", geometry: "geojson", pixel_size: $("pixel-size").value || "1" }, "objects.geojson", (body) => body.objects));
const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); } });
init();
