// usedge serve page: polls /v1/latest, shows the MJPEG /v1/live view, smooths the class
// probabilities over time (exponential, time constant TAU_S seconds) and posts one image to /v1/predict.
"use strict";

const TAU_S = 1.0;          // smoothing time constant, seconds
const POLL_MS = 200;        // /v1/latest polling period, milliseconds
let classNames = [];
let smoothed = null;        // class -> probability
let lastT = null;           // performance.now() of the last smoothing step, ms
let lastSeq = -1;

function $(id) { return document.getElementById(id); }

function makeBars(container) {
  container.replaceChildren();
  for (const name of classNames) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.cls = name;
    const label = document.createElement("span");
    label.textContent = name.replace(/_/g, " ");
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = "—";
    row.append(label, track, value);
    container.appendChild(row);
  }
}

function setBars(container, probs) {
  let best = null;
  for (const name of classNames) if (best === null || probs[name] > probs[best]) best = name;
  for (const row of container.children) {
    const p = probs[row.dataset.cls] || 0;
    row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".value").textContent = (100 * p).toFixed(1) + "%";
    row.classList.toggle("top", row.dataset.cls === best);
  }
  return best;
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill " + (cls || "");
}

// live: the label is this frame's answer; frozen: the scanner is frozen, the label repeats the last
// live answer; no image: the scanner shows no image, there is no label
const IMAGE_TEXT = { live: "live", frozen: "frozen", no_image: "no image", error: "model error" };

function setImageState(image, p) {
  const s = $("image-state");
  s.textContent = image ? IMAGE_TEXT[image] || image : "—";
  s.className = "pill " + (image === "live" ? "ok" : (image ? "bad" : ""));
  s.title = p && p.reason ? p.reason : "";
}

function smooth(probs, alreadySmoothed) {
  const now = performance.now();
  if (smoothed === null || alreadySmoothed) {
    smoothed = { ...probs };
  } else {
    const a = 1 - Math.exp(-(now - lastT) / 1000 / TAU_S);
    for (const n of classNames) smoothed[n] += a * ((probs[n] || 0) - smoothed[n]);
  }
  lastT = now;
  return smoothed;
}

async function poll() {
  try {
    const r = await fetch("/v1/latest", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    setStatus(d.state, d.state === "running" ? "ok" : (d.state === "failed" ? "bad" : ""));
    const p = d.prediction;
    setImageState(d.image, p);
    if (p && d.seq !== lastSeq && p.label === null) {   // no image / model error: no label, no bars
      lastSeq = d.seq;
      smoothed = null;
      makeBars($("live-bars"));
      $("current-label").textContent = d.image === "no_image" ? "no image" : "no result";
      $("current-prob").textContent = p.reason || "";
      $("seq").textContent = String(d.seq);
    } else if (p && d.seq !== lastSeq) {
      lastSeq = d.seq;
      const s = smooth(p.probs, p.smoothed);
      const best = setBars($("live-bars"), s);
      $("current-label").textContent = best.replace(/_/g, " ");
      $("current-prob").textContent = (100 * s[best]).toFixed(1) + "% (last frame: " + p.label.replace(/_/g, " ") + ")";
      const lat = p.latency_ms || {};
      $("latency").textContent = (lat.total !== undefined ? lat.total : NaN).toFixed(1);
      $("seq").textContent = String(d.seq);
    }
    const st = d.stats || {};
    if (st.fps !== undefined) $("fps").textContent = Number(st.fps).toFixed(1);
    if (st.dropped !== undefined) $("dropped").textContent = String(st.dropped);
  } catch (e) {
    setStatus("disconnected", "bad");
  }
  setTimeout(poll, POLL_MS);
}

function startLive() {
  const img = $("live");
  let retry = 0;
  img.onerror = () => {               // the MJPEG connection broke: reconnect with back-off
    retry = Math.min(retry + 1, 5);
    setTimeout(() => { img.src = "/v1/live?r=" + Date.now(); }, 500 * retry);
  };
  img.onload = () => { retry = 0; };
  img.src = "/v1/live";
}

async function upload(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const button = $("upload-button");
  button.disabled = true;
  $("upload-error").hidden = true;
  try {
    const form = new FormData();
    form.append("file", file);
    const r = await fetch("/v1/predict?overlay=true", { method: "POST", body: form });
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
    $("upload-result").hidden = false;
    $("upload-label").textContent = d.label.replace(/_/g, " ");
    $("upload-latency").textContent = d.latency_ms.total.toFixed(1) + " ms model+crop, " +
      d.latency_ms.request.toFixed(1) + " ms request";
    setBars($("upload-bars"), d.probs);
    if (d.overlay_png) $("upload-overlay").src = "data:image/png;base64," + d.overlay_png;
  } catch (e) {
    $("upload-error").textContent = String(e.message || e);
    $("upload-error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function main() {
  $("upload-form").addEventListener("submit", upload);
  let info;
  try {
    const r = await fetch("/v1/info", { cache: "no-store" });
    info = await r.json();
    if (!r.ok) throw new Error(info.error || ("HTTP " + r.status));
  } catch (e) {
    setStatus("error", "bad");
    $("model").textContent = String(e.message || e);
    return;
  }
  classNames = info.class_names;
  $("model").textContent = info.backend;
  makeBars($("live-bars"));
  makeBars($("upload-bars"));
  if (info.stream) {
    startLive();
    poll();
  } else {
    $("live").hidden = true;
    $("no-stream").hidden = false;
    setStatus("uploads only", "ok");
  }
}

document.addEventListener("DOMContentLoaded", main);
