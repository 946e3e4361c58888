// stemjepa web app: upload or pick a mix, query, and play the mix with a candidate in WebAudio.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { upload: null, uploadedFile: null, query: null, rank: null, generation: 0 };
const PITCHES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

async function api(url, options = {}) {
  const res = await fetch(url, options);
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error(body?.detail ? String(body.detail) : `${res.status} ${res.statusText}`);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showProgress(stage, fraction) {
  $("progress").hidden = stage === null;
  $("stage").textContent = stage || "";
  $("bar").value = fraction ?? 0;
}

// ---- start-up: library, labels, mixes folder ------------------------------------------------------------------
async function init() {
  // info and labels are fetched together and shown together: the library line appears only once the label
  // suggestions are in place, so whoever waits for the line (a person or a test) sees the whole page.
  const [info, { labels }] = await Promise.all([api("/api/info"), api("/api/labels")]);
  for (const label of labels) $("labels").append(new Option(label));
  for (const mode of ["major", "minor"]) for (const p of PITCHES) $("keys").append(new Option(`${p} ${mode}`));
  const first = info.indexes[0];
  $("library").textContent = info.indexes.map((i) => `${i.name}: ${i.files} stems`).join(" · ") +
    ` · uploads up to ${info.limits.max_upload_mb} MB and ${Math.round(info.limits.max_seconds / 60)} min`;
  $("k").max = info.limits.max_k;
  if (info.indexes.length > 1) {
    $("index-field").hidden = false;
    for (const i of info.indexes) $("index").append(new Option(`${i.name} (${i.files})`, i.name));
  }
  if (first && !first.has_predictor) {
    $("library").textContent += " · this model has no instrument predictor: the instrument text is ignored";
  }
  if (info.mixes_folder) {
    const { mixes } = await api("/api/mixes");
    $("pick-field").hidden = false;
    for (const m of mixes) $("pick").append(new Option(m, m));
  }
  document.body.dataset.ready = "true";  // start-up finished: library, labels and mixes are on the page
}

// ---- upload with progress -------------------------------------------------------------------------------------
function uploadFile(file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/uploads?filename=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && showProgress(`uploading ${file.name}`, e.loaded / e.total);
    xhr.upload.onload = () => showProgress(`checking ${file.name} (decoding it)`, 1);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201) resolve(body);
      else reject(new Error(body?.detail || `upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new Error(`${file.name}: upload failed (connection lost?)`));
    showProgress(`uploading ${file.name}`, 0);
    xhr.send(file);
  });
}

function ensureUpload() {
  const file = $("file").files[0];
  if (!file) return Promise.resolve(null);
  if (state.uploadedFile !== file) {  // one upload per chosen file; a failed one is tried again on the next search
    state.uploadedFile = file;
    state.upload = uploadFile(file);
    state.upload.catch(() => { if (state.uploadedFile === file) state.uploadedFile = null; });
  }
  return state.upload;
}

// ---- query ----------------------------------------------------------------------------------------------------
async function runQuery() {
  showError("");
  $("search").disabled = true;
  try {
    const body = { instrument: $("instrument").value, k: Number($("k").value) || 10, ...filterFields() };
    if (!$("index-field").hidden) body.index = $("index").value;
    const up = $("file").files[0] ? await ensureUpload() : null;
    if (up) body.upload = up.id;
    else if ($("pick").value) body.mix = $("pick").value;
    else throw new Error("choose a mix first: upload a file" + ($("pick-field").hidden ? "" : " or pick one"));
    if (!body.instrument.trim()) throw new Error('say which instrument to look for, e.g. "bass"');
    const { job_url } = await api("/api/queries", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let job;
    for (;;) {
      job = await api(job_url);
      showProgress(job.stage, job.progress);
      if (job.state === "done" || job.state === "error") break;
      await new Promise((r) => setTimeout(r, 250));
    }
    if (job.state === "error") throw new Error(job.error);
    showProgress(null);
    await showResults(job.result);
  } catch (err) {
    showProgress(null);
    showError(err.message);
  } finally {
    $("search").disabled = false;
  }
}

// The filters as the API takes them (the CLI's --bpm / --key / --rank text): "120+-3" ("!" = no half/double time),
// "Am" or "Am:relative" / "Am:camelot". Empty fields send nothing.
function filterFields() {
  const out = { rank: $("rank").value };
  const bpm = $("bpm").value.trim();
  if (bpm) {
    const tol = $("bpm-tol").value.trim();
    out.bpm = `${bpm}${tol ? `+-${tol}` : ""}${$("half-double").checked ? "" : "!"}`;
  }
  const key = $("key").value.trim();
  if (key) out.key = $("key-mode").value === "same" ? key : `${key}:${$("key-mode").value}`;
  return out;
}

function fmtZ(z) { return `${z >= 0 ? "+" : "\u2212"}${Math.abs(z).toFixed(1)}\u03c3`; }
function fmtBpm(a) { return a && a.bpm != null ? a.bpm.toFixed(1) : "\u2013"; }
function fmtKey(a) { return a && a.key ? `${a.key}${a.camelot ? ` (${a.camelot})` : ""}` : "\u2013"; }
function fitOn() { return $("fit").checked; }
function candUrl(r) { return fitOn() ? r.fitted_url : r.aligned_url; }
function candFile(r) { return fitOn() ? r.fitted_file_name : r.file_name; }

function describeMix(q) {
  const a = q.mix.analysis;
  if (!a) return `Mix: tempo and key unknown (not analysed)`;
  const bpm = a.bpm != null ? `${a.bpm.toFixed(1)} BPM` : "no steady beat";
  const key = a.key ? `${a.key}${a.camelot ? ` (${a.camelot})` : ""}` : "no key";
  const f = q.filters || {};
  const used = [f.bpm && `tempo ${f.bpm}`, f.key && `key ${f.key}`].filter(Boolean);
  return `Mix: ${bpm} \u00b7 ${key}` + (used.length ? ` \u00b7 filtered by ${used.join(", ")}` : "") +
    (f.rank === "compat" ? " \u00b7 ordered by model + tempo/key fit" : "");
}

// The previous query's candidate leaves the page at once: no stale name, picture, link or audio while the new mix loads.
function clearCandidate() {
  state.rank = null;
  player.reset();
  $("cand-name").textContent = "";
  $("cand-spec").removeAttribute("src");
  drawWave($("cand-wave"), null);
  for (const id of ["dl-aligned", "dl-premix"]) $(id).removeAttribute("href");
  $("drag-out").dataset.url = "";
  drawHead();
}

async function showResults(q) {
  const wasPlaying = player.playing;
  const generation = ++state.generation;
  clearCandidate();
  state.query = q;
  $("results").hidden = false;
  $("results-title").textContent =
    `${q.results.length} stems for \u201c${q.instrument}\u201d with ${q.mix.name} (library of ${q.library_size})`;
  const rows = $("rows");
  rows.replaceChildren();
  for (const r of q.results) {
    const tr = $("row-template").content.firstElementChild.cloneNode(true);
    tr.dataset.rank = r.rank;
    tr.querySelector(".rank").textContent = r.rank;
    tr.querySelector(".z").textContent = fmtZ(r.z);
    tr.querySelector(".z").title = `cosine ${r.cosine.toFixed(4)}`;
    tr.querySelector(".percentile").textContent = `${r.percentile.toFixed(0)}%`;
    tr.querySelector(".bpm").textContent = fmtBpm(r.analysis);
    tr.querySelector(".key").textContent = fmtKey(r.analysis);
    if (r.compatibility != null) {
      const fit = `tempo x key fit to the mix: ${r.compatibility.toFixed(2)}`;
      tr.querySelector(".bpm").title = tr.querySelector(".key").title = fit;
    }
    tr.querySelector(".stem-name").textContent = r.name;
    tr.querySelector(".stem-path").textContent = r.path;
    tr.querySelector(".labels").textContent = r.labels.length ? r.labels.join(" \u203a ") : "\u2013";
    tr.querySelector(".offset").textContent = `${r.offset.toFixed(1)} s of ${r.duration.toFixed(1)} s`;
    tr.querySelector(".thumb img").src = r.picture_url;
    tr.querySelector(".download").href = candUrl(r);
    tr.querySelector(".drag").addEventListener("dragstart", (e) => dragOut(e, r));
    tr.addEventListener("click", (e) => { if (!e.target.closest("a, .drag")) selectCandidate(r.rank); });
    rows.append(tr);
  }
  $("listen").hidden = false;
  $("mix-name").textContent = `${q.mix.name} \u00b7 ${q.mix.seconds.toFixed(1)} s \u00b7 ${q.mix.sample_rate} Hz`;
  $("mix-analysis").textContent = describeMix(q);
  document.dispatchEvent(new CustomEvent("stemjepa:results", { detail: q.id }));  // rows shown, old candidate gone
  $("mix-spec").src = q.mix.picture_url;
  const mixBuf = await player.decode(q.mix.audio_url);
  if (generation !== state.generation) return;  // newer results arrived meanwhile
  player.setMix(mixBuf);
  drawWave($("mix-wave"), player.mixBuf);
  drawHead();
  if (q.results.length) await selectCandidate(1);
  if (wasPlaying && q.results.length && generation === state.generation) await player.play();
}

async function selectCandidate(rank) {
  const q = state.query, r = q.results[rank - 1];
  state.rank = rank;
  for (const tr of $("rows").children) {
    const on = Number(tr.dataset.rank) === rank;
    tr.classList.toggle("selected", on);
    if (on) tr.scrollIntoView({ block: "nearest" });
  }
  const how = fitOn() ? "fitted to the mix's tempo, key and downbeat" : `from ${r.offset.toFixed(1)} s, looped to the mix`;
  const bpm = r.analysis?.bpm != null ? `${fmtBpm(r.analysis)} BPM` : "no beat";
  const key = r.analysis?.key ? fmtKey(r.analysis) : "no key";
  $("cand-name").textContent = `#${r.rank} ${r.path} \u00b7 ${bpm} \u00b7 ${key} \u00b7 ${how}`;
  $("cand-spec").src = r.picture_url;
  updateLinks();
  try {
    const buf = await player.setCandidate(rank, candUrl(r));
    if (state.rank === rank && state.query === q) drawWave($("cand-wave"), buf);
  } catch (err) {
    showError(err.message);
    if (fitOn() && state.rank === rank) {  // the fit failed (e.g. a mix without tempo and key): back to aligned
      $("fit").checked = false;
      updateLinks();
    }
  }
}

function updateLinks() {
  const q = state.query, r = q?.results[state.rank - 1];
  if (!r) return;
  const fit = fitOn() ? "&fit=1" : "";
  $("dl-aligned").href = candUrl(r);
  $("dl-aligned").textContent = fitOn() ? "Download fitted candidate" : "Download aligned candidate";
  $("dl-premix").href = `${r.premix_url}?balance=${$("balance").value}${fit}`;
  $("drag-out").dataset.url = candUrl(r);
  for (const tr of $("rows").children) tr.querySelector(".download").href = candUrl(q.results[tr.dataset.rank - 1]);
}

// ---- drag a candidate out of the page as a WAV file (Chromium's DownloadURL; the WAV link is the fallback) -------
function dragOut(e, r) {
  const url = new URL(candUrl(r), location.href).href;
  e.dataTransfer.effectAllowed = "copy";
  e.dataTransfer.setData("DownloadURL", `audio/wav:${candFile(r)}:${url}`);
  e.dataTransfer.setData("text/uri-list", url);
  e.dataTransfer.setData("text/plain", url);
}

// ---- waveform pictures ----------------------------------------------------------------------------------------
function drawWave(canvas, buf) {
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio || 720);
  const h = (canvas.height = canvas.clientHeight * devicePixelRatio || 60);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  if (!buf) return;
  const data = buf.getChannelData(0);
  const step = Math.max(1, Math.floor(data.length / w));
  g.fillStyle = getComputedStyle(canvas).color;
  for (let x = 0; x < w; x++) {
    let lo = 1, hi = -1;
    for (let i = x * step, end = Math.min(data.length, i + step); i < end; i++) {
      const v = data[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (hi < lo) continue;
    g.fillRect(x, (1 - hi) * h / 2, 1, Math.max(1, (hi - lo) * h / 2));
  }
}

// ---- playhead and click-to-seek -------------------------------------------------------------------------------
function drawHead() {
  const d = player.mixBuf ? player.mixBuf.duration : 0;
  const at = d ? player.position() : 0;
  const pct = d ? (100 * at) / d : 0;
  $("seek-fill").style.width = `${pct}%`;
  $("seek").setAttribute("aria-valuenow", pct.toFixed(0));
  for (const id of ["mix-head", "cand-head"]) $(id).style.left = `${pct}%`;
  $("now").textContent = d ? `${at.toFixed(1)} s / ${d.toFixed(1)} s` : "";
}

function seekFromClick(e) {
  if (!player.mixBuf) return;
  const box = e.currentTarget.getBoundingClientRect();
  player.seek(Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)) * player.mixBuf.duration);
}

// ---- WebAudio player: mix and candidate, same length, looped together -----------------------------------------
const player = {
  ctx: null, mixBuf: null, buffers: new Map(), mixSrc: null, mixGain: null, cand: null,
  playing: false, startedAt: 0, pausedAt: 0, rank: null, mixSources: 0, switches: 0, seeks: 0,

  context() {
    if (!this.ctx) this.ctx = new AudioContext();
    return this.ctx;
  },
  async decode(url) {
    const res = await fetch(url);
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    return await this.context().decodeAudioData(await res.arrayBuffer());
  },
  // forget everything of the previous query: its audio stops now and its buffers cannot come back
  reset() {
    this.stop();
    this.buffers.clear();
    this.mixBuf = null;
    this.rank = null;
    this.url = null;
    this.pausedAt = 0;
  },
  setMix(buf) {
    this.mixBuf = buf;
    this.pausedAt = 0;
  },
  async setCandidate(rank, url) {
    if (!this.buffers.has(url)) {
      const buf = await this.decode(url);
      if (!this.mixBuf) return buf;  // reset meanwhile (new results): keep nothing of the old query
      this.buffers.set(url, buf);
    }
    const buf = this.buffers.get(url);
    if (state.rank !== rank) return buf;  // another candidate was chosen while this one loaded
    this.rank = rank;
    this.url = url;
    if (this.playing) this.startCandidate(buf, true);
    return buf;
  },
  get currentTime() { return this.position(); },
  seek(seconds) {
    this.seeks++;
    this.lastSeek = seconds;
    if (this.playing) this.play(seconds);
    else this.pausedAt = seconds;
    drawHead();
  },
  gains() {
    const b = Number($("balance").value);
    return [Math.min(1, 2 * (1 - b)), Math.min(1, 2 * b)];
  },
  position(at) {
    if (!this.mixBuf) return 0;
    if (!this.playing) return this.pausedAt;
    const t = at ?? this.ctx.currentTime, d = this.mixBuf.duration;
    return ((t - this.startedAt) % d + d) % d;
  },
  startCandidate(buf, crossfade) {
    const ctx = this.ctx, at = ctx.currentTime + 0.02, old = this.cand;
    const src = ctx.createBufferSource(), gain = ctx.createGain();
    src.buffer = buf;
    src.loop = true;
    src.connect(gain).connect(ctx.destination);
    const level = this.gains()[1];
    if (crossfade) {
      gain.gain.setValueAtTime(0, at);
      gain.gain.linearRampToValueAtTime(level, at + 0.05);
    } else gain.gain.value = level;
    src.start(at, this.position(at) * buf.duration / this.mixBuf.duration);
    if (old) {
      old.gain.gain.setValueAtTime(old.gain.gain.value, at);
      old.gain.gain.linearRampToValueAtTime(0, at + 0.05);
      old.src.stop(at + 0.06);
      this.switches++;
    }
    this.cand = { src, gain, rank: this.rank };
  },
  async play(from) {
    if (!this.mixBuf || this.rank === null) return;
    const ctx = this.context();
    if (ctx.state !== "running") await ctx.resume();
    const offset = from ?? this.pausedAt;
    this.stop();
    const at = ctx.currentTime + 0.05;
    this.mixGain = ctx.createGain();
    this.mixGain.gain.value = this.gains()[0];
    this.mixSrc = ctx.createBufferSource();
    this.mixSrc.buffer = this.mixBuf;
    this.mixSrc.loop = true;
    this.mixSrc.connect(this.mixGain).connect(ctx.destination);
    this.startedAt = at - offset;
    this.from = offset;
    this.mixSrc.start(at, offset);
    this.mixSources++;
    this.playing = true;
    this.startCandidate(this.buffers.get(this.url), false);
    $("play").innerHTML = "&#10074;&#10074; Pause";
    requestAnimationFrame(() => this.tick());
  },
  // stop both sources; the position is kept, so play (or space) resumes there
  stop() {
    if (this.playing && this.ctx) this.pausedAt = this.position(this.ctx.currentTime);
    for (const node of [this.mixSrc, this.cand?.src]) if (node) { try { node.stop(); } catch (_) { /* not started */ } }
    this.mixSrc = null;
    this.cand = null;
    this.playing = false;
    $("play").innerHTML = "&#9654; Play together";
  },
  toggle() { return this.playing ? this.stop() : this.play(); },
  setBalance() {
    const [m, c] = this.gains();
    if (this.mixGain) this.mixGain.gain.setTargetAtTime(m, this.ctx.currentTime, 0.02);
    if (this.cand) this.cand.gain.gain.setTargetAtTime(c, this.ctx.currentTime, 0.02);
  },
  tick() {
    if (!this.playing) return;
    drawHead();
    requestAnimationFrame(() => this.tick());
  },
  // what the browser test reads: is the audio graph running, what plays
  status() {
    return {
      context: this.ctx ? this.ctx.state : "none", time: this.ctx ? this.ctx.currentTime : 0,
      playing: this.playing, rank: this.cand ? this.cand.rank : null, mixSources: this.mixSources,
      switches: this.switches, position: this.mixBuf ? this.position() : null, seeks: this.seeks,
      lastSeek: this.lastSeek ?? null, from: this.from ?? null, url: this.url ?? null,
    };
  },
};
window.stemjepa = { player, state };

$("search").addEventListener("click", runQuery);
$("instrument").addEventListener("keydown", (e) => { if (e.key === "Enter") runQuery(); });
$("file").addEventListener("change", () => {
  showError("");
  if (!$("file").files[0]) return;
  $("pick").value = "";
  ensureUpload().then((up) => showProgress(`${up.name}: ${up.seconds.toFixed(1)} s, ${up.sample_rate} Hz, ready`, 1))
    .catch((err) => { showProgress(null); showError(err.message); });
});
$("pick").addEventListener("change", () => { if ($("pick").value) $("file").value = ""; });
$("play").addEventListener("click", () => player.toggle());
$("balance").addEventListener("input", () => { player.setBalance(); updateLinks(); });
$("fit").addEventListener("change", () => { if (state.rank !== null) selectCandidate(state.rank); });
$("drag-out").addEventListener("dragstart", (e) => {
  const r = state.query?.results[state.rank - 1];
  if (r) dragOut(e, r); else e.preventDefault();
});
for (const el of [$("seek"), ...document.querySelectorAll(".seekable")]) el.addEventListener("click", seekFromClick);

// keyboard: space plays/pauses, up/down choose the previous/next candidate; never while typing in a field
document.addEventListener("keydown", (e) => {
  if (e.altKey || e.ctrlKey || e.metaKey || !state.query || !player.mixBuf) return;
  if (e.target.closest("input, select, textarea, button, [contenteditable]")) return;
  const n = state.query.results.length;
  if (e.key === " ") {
    e.preventDefault();
    if (state.rank !== null) player.toggle();
  } else if ((e.key === "ArrowDown" || e.key === "ArrowUp") && n) {
    e.preventDefault();
    const next = Math.min(n, Math.max(1, (state.rank ?? 0) + (e.key === "ArrowDown" ? 1 : -1)));
    if (next !== state.rank) selectCandidate(next);
  }
});
init().catch((err) => showError(`cannot reach the server: ${err.message}`));
