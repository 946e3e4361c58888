// stemjepa web app: upload or pick a mix, query, and play the mix with a candidate in WebAudio.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { upload: null, uploadedFile: null, query: null, rank: null };

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
    const body = { instrument: $("instrument").value, k: Number($("k").value) || 10 };
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

function fmtScore(z) { return `${z >= 0 ? "+" : "\u2212"}${Math.abs(z).toFixed(1)}\u03c3`; }

async function showResults(q) {
  const wasPlaying = player.playing;
  player.stop();
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
    tr.querySelector(".score").textContent = fmtScore(r.score);
    tr.querySelector(".score").title = `cosine ${r.cosine.toFixed(4)}`;
    tr.querySelector(".pct").textContent = `${r.percentile.toFixed(0)}%`;
    tr.querySelector(".stem-name").textContent = r.name;
    tr.querySelector(".stem-path").textContent = r.path;
    tr.querySelector(".labels").textContent = r.labels.length ? r.labels.join(" \u203a ") : "\u2013";
    tr.querySelector(".offset").textContent = `${r.offset.toFixed(1)} s of ${r.duration.toFixed(1)} s`;
    tr.querySelector(".thumb img").src = r.picture_url;
    tr.querySelector(".download").href = r.aligned_url;
    tr.addEventListener("click", (e) => { if (!e.target.closest("a")) selectCandidate(r.rank); });
    rows.append(tr);
  }
  $("listen").hidden = false;
  $("mix-name").textContent = `${q.mix.name} \u00b7 ${q.mix.seconds.toFixed(1)} s \u00b7 ${q.mix.sample_rate} Hz`;
  $("mix-spec").src = q.mix.picture_url;
  await player.loadMix(q.mix.audio_url);
  drawWave($("mix-wave"), player.mixBuf);
  if (q.results.length) await selectCandidate(1);
  if (wasPlaying && q.results.length) await player.play();
}

async function selectCandidate(rank) {
  const r = state.query.results[rank - 1];
  state.rank = rank;
  for (const tr of $("rows").children) tr.classList.toggle("selected", Number(tr.dataset.rank) === rank);
  $("cand-name").textContent = `#${r.rank} ${r.path} \u00b7 from ${r.offset.toFixed(1)} s, looped to the mix`;
  $("cand-spec").src = r.picture_url;
  $("dl-aligned").href = r.aligned_url;
  updatePremixLink();
  const buf = await player.setCandidate(rank, r.aligned_url);
  if (state.rank === rank) drawWave($("cand-wave"), buf);
}

function updatePremixLink() {
  const r = state.query?.results[state.rank - 1];
  if (r) $("dl-premix").href = `${r.premix_url}?balance=${$("balance").value}`;
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

// ---- WebAudio player: mix and candidate, same length, looped together -----------------------------------------
const player = {
  ctx: null, mixBuf: null, buffers: new Map(), mixSrc: null, mixGain: null, cand: null,
  playing: false, startedAt: 0, rank: null, mixSources: 0, switches: 0,

  context() {
    if (!this.ctx) this.ctx = new AudioContext();
    return this.ctx;
  },
  async decode(url) {
    const bytes = await (await fetch(url)).arrayBuffer();
    return await this.context().decodeAudioData(bytes);
  },
  async loadMix(url) {
    this.buffers.clear();
    this.mixBuf = await this.decode(url);
  },
  async setCandidate(rank, url) {
    if (!this.buffers.has(rank)) this.buffers.set(rank, await this.decode(url));
    const buf = this.buffers.get(rank);
    this.rank = rank;
    if (this.playing) this.startCandidate(buf, true);
    return buf;
  },
  gains() {
    const b = Number($("balance").value);
    return [Math.min(1, 2 * (1 - b)), Math.min(1, 2 * b)];
  },
  position(at) { return ((at - this.startedAt) % this.mixBuf.duration + this.mixBuf.duration) % this.mixBuf.duration; },
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
  async play() {
    if (!this.mixBuf || this.rank === null) return;
    const ctx = this.context();
    if (ctx.state !== "running") await ctx.resume();
    this.stop();
    const at = ctx.currentTime + 0.05;
    this.mixGain = ctx.createGain();
    this.mixGain.gain.value = this.gains()[0];
    this.mixSrc = ctx.createBufferSource();
    this.mixSrc.buffer = this.mixBuf;
    this.mixSrc.loop = true;
    this.mixSrc.connect(this.mixGain).connect(ctx.destination);
    this.startedAt = at;
    this.mixSrc.start(at);
    this.mixSources++;
    this.playing = true;
    this.startCandidate(this.buffers.get(this.rank), false);
    $("play").innerHTML = "&#9632; Stop";
    requestAnimationFrame(() => this.tick());
  },
  stop() {
    for (const node of [this.mixSrc, this.cand?.src]) if (node) { try { node.stop(); } catch (_) { /* not started */ } }
    this.mixSrc = null;
    this.cand = null;
    this.playing = false;
    $("play").innerHTML = "&#9654; Play together";
    $("now").textContent = "";
  },
  setBalance() {
    const [m, c] = this.gains();
    if (this.mixGain) this.mixGain.gain.setTargetAtTime(m, this.ctx.currentTime, 0.02);
    if (this.cand) this.cand.gain.gain.setTargetAtTime(c, this.ctx.currentTime, 0.02);
  },
  tick() {
    if (!this.playing) return;
    $("now").textContent = `${this.position(this.ctx.currentTime).toFixed(1)} s / ${this.mixBuf.duration.toFixed(1)} s`;
    requestAnimationFrame(() => this.tick());
  },
  // what the browser test reads: is the audio graph running, what plays
  status() {
    return {
      context: this.ctx ? this.ctx.state : "none", time: this.ctx ? this.ctx.currentTime : 0,
      playing: this.playing, rank: this.cand ? this.cand.rank : null, mixSources: this.mixSources,
      switches: this.switches, position: this.playing ? this.position(this.ctx.currentTime) : null,
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
$("play").addEventListener("click", () => (player.playing ? player.stop() : player.play()));
$("balance").addEventListener("input", () => { player.setBalance(); updatePremixLink(); });
init().catch((err) => showError(`cannot reach the server: ${err.message}`));
