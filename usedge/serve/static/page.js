// usedge serve page. The live view is ONE loop over /v1/frame: each answer is one result's own frame
// (the JPEG body) and that same result (the X-Usedge-Result header), shown together or not at all,
// so the image and the label can never come from different frames. The label is never drawn on the
// image (the scanner's probe and preset text stay visible); a result whose top-two margin is below the
// model card's uncertainty margin is called "uncertain", not given as a diagnosis.
"use strict";

let classNames = [];
let lastSeq = -1;
let card = {};              // the model card summary from /v1/info
let liveUrl = null;         // object URL of the JPEG now shown

function $(id) { return document.getElementById(id); }
function pretty(name) { return name.replace(/_/g, " "); }

function makeBars(container) {
  container.replaceChildren();
  for (const name of classNames) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.cls = name;
    const label = document.createElement("span");
    label.textContent = pretty(name);
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

// "margin 2.0 points between the top two: UNCERTAIN (below 20 points, the model card's margin)"
function verdictText(r) {
  if (r.margin === null || r.margin === undefined) return { text: "", uncertain: false };
  const m = (100 * r.margin).toFixed(1);
  if (r.uncertain_margin === null || r.uncertain_margin === undefined)
    return { text: "margin " + m + " points between the top two classes (no uncertainty margin in the model card)",
             uncertain: false };
  const t = (100 * r.uncertain_margin).toFixed(0);
  if (r.uncertain)
    return { text: "UNCERTAIN: the top two classes differ by " + m + " points (below " + t + ", the model card's margin)",
             uncertain: true };
  return { text: "margin " + m + " points between the top two classes (uncertain below " + t + ")", uncertain: false };
}

function setVerdict(el, r) {
  const v = verdictText(r);
  el.textContent = v.text;
  el.classList.toggle("uncertain", v.uncertain);
  return v.uncertain;
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

function setStats(r) {
  setStatus(r.state, r.state === "running" ? "ok" : (r.state === "failed" || r.state === "stalled" ? "bad" : ""));
  if (r.state === "stalled") {          // the source sends nothing: the last answer is old, never "live"
    const s = $("image-state");
    s.textContent = "no new frame for " + Math.round(r.age_s || 0) + " s";
    s.className = "pill bad";
  } else if (r.state === "ended" || r.state === "failed") {   // the last answer stays, but it is not live
    const s = $("image-state");
    s.textContent = "stream " + r.state;
    s.className = "pill bad";
    s.title = r.error || "";
  }
  const st = r.stats || {};
  if (st.fps !== undefined) $("fps").textContent = Number(st.fps).toFixed(1);
  if (st.dropped !== undefined) $("dropped").textContent = String(st.dropped);
}

// The result panel for the result `r` whose frame is now in the <img>.
function showResult(r) {
  const p = r.prediction;
  setImageState(r.image, p);
  $("current").dataset.seq = String(r.seq);
  $("current-seq").textContent = "frame " + r.seq;
  $("seq").textContent = String(r.seq);
  const label = $("current-label");
  if (!p || p.label === null) {                 // no image / model error: no label, no bars
    makeBars($("live-bars"));
    label.textContent = r.image === "no_image" ? "no image" : "no result";
    label.classList.remove("uncertain");
    $("current-verdict").textContent = "";
    $("current-prob").textContent = p && p.reason ? p.reason : "";
    return;
  }
  setBars($("live-bars"), p.probs);
  const uncertain = setVerdict($("current-verdict"), r);
  label.textContent = uncertain ? "uncertain (" + pretty(p.label) + "?)" : pretty(p.label);
  label.classList.toggle("uncertain", uncertain);
  $("current-prob").textContent = (100 * p.probs[p.label]).toFixed(1) + "%" + (p.smoothed ? " (smoothed over recent frames)" : "");
  const lat = p.latency_ms || {};
  if (lat.total !== undefined) $("latency").textContent = lat.total.toFixed(1);
}

async function liveLoop() {
  const img = $("live");
  let failures = 0;
  for (;;) {
    try {
      const cam = $("cam-toggle").checked ? "true" : "false";
      const r = await fetch("/v1/frame?after=" + lastSeq + "&cam=" + cam, { cache: "no-store" });
      if (r.status !== 200 && r.status !== 204) throw new Error("HTTP " + r.status);
      const result = JSON.parse(r.headers.get("X-Usedge-Result") || "{}");
      setStats(result);
      if (r.status === 200) {
        const url = URL.createObjectURL(await r.blob());
        img.src = url;
        await img.decode();                   // the image is ready: show it and its result together
        img.dataset.seq = String(result.seq);
        img.dataset.cam = String(result.cam);
        showResult(result);
        if (liveUrl) URL.revokeObjectURL(liveUrl);
        liveUrl = url;
        lastSeq = result.seq;
      }
      failures = 0;
    } catch (e) {
      setStatus("disconnected", "bad");
      failures = Math.min(failures + 1, 5);
      await new Promise((ok) => setTimeout(ok, 500 * failures));
    }
  }
}

function showCard(info) {
  card = info.model_card || {};
  const badge = $("provenance-badge");
  if (card.synthetic === true) badge.textContent = "Trained on SYNTHETIC data (usedge's phantom) — not validated on patients.";
  else if (card.present) badge.textContent = card.synthetic === false ? "Trained on non-synthetic data." : "Training data unknown.";
  else badge.textContent = "No model card: provenance unknown.";
  $("provenance-line").textContent = card.line || "";
  $("provenance").hidden = false;
  $("provenance").dataset.synthetic = String(card.synthetic === true);
  const toggle = $("cam-toggle");
  toggle.checked = false;                       // off by default
  toggle.disabled = !info.has_cam;
  $("cam-localisation").textContent = !info.has_cam ? "(this model has no activation map)" :
    (card.localisation ? "measured localisation: " + card.localisation : "localisation not measured");
  toggle.addEventListener("change", () => { lastSeq = -1; });  // the next frame comes with or without it
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
    const cam = $("cam-toggle").checked ? "true" : "false";   // the CAM only when the toggle is on
    const r = await fetch("/v1/predict?overlay=true&cam=" + cam, { method: "POST", body: form });
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
    $("upload-result").hidden = false;
    const uncertain = setVerdict($("upload-verdict"), d);
    $("upload-label").textContent = uncertain ? "uncertain (" + pretty(d.label) + "?)" : pretty(d.label);
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
  showCard(info);
  makeBars($("live-bars"));
  makeBars($("upload-bars"));
  if (info.stream) {
    liveLoop();
  } else {
    $("live").hidden = true;
    $("no-stream").hidden = false;
    setStatus("uploads only", "ok");
  }
}

document.addEventListener("DOMContentLoaded", main);
