/* srgan serve: the web page. Plain JavaScript, no libraries, no build step, no requests beyond this
   server. Each file: upload (POST /api/jobs) -> poll (GET /api/jobs/{id}) -> fetch the result as a
   blob -> DELETE /api/jobs/{id}; at most MAX_ACTIVE files at a time. */
"use strict";

(() => {
  const MAX_ACTIVE = 2; // files this page runs at once (the server queues the rest of the world)
  const POLL_MS = 300;
  const BUSY_WAIT_MS = 1000; // after a 429
  const BUSY_RETRIES = 30;
  const POLL_ERRORS = 5; // consecutive failed polls (network, 5xx) before a file is given up
  const TOKEN_KEY = "srgan-serve-token";

  const $ = (id) => document.getElementById(id);
  const el = {
    main: $("main"),
    serverInfo: $("server-info"),
    notice: $("notice"),
    model: $("model"),
    outscale: $("outscale"),
    format: $("format"),
    quality: $("quality"),
    qualityField: $("quality-field"),
    qualityValue: $("quality-value"),
    denoise: $("denoise"),
    denoiseField: $("denoise-field"),
    denoiseValue: $("denoise-value"),
    files: $("files"),
    limits: $("limits"),
    downloadAll: $("download-all"),
    clear: $("clear"),
    summary: $("summary"),
    jobs: $("jobs"),
    template: $("job-template"),
    viewer: $("viewer"),
    viewerName: $("viewer-name"),
    split: $("split"),
    fit: $("fit"),
    pixelated: $("pixelated"),
    stage: $("stage"),
    after: $("after"),
    before: $("before"),
    divider: $("divider"),
    sizeHelp: $("size-help"),
    announce: $("announce"),
  };

  const state = {
    ready: false,
    models: [],
    limits: null,
    token: readToken(),
    jobs: [],
    active: 0,
    selected: null,
    nextId: 1,
  };

  // --- the server ----------------------------------------------------------------------------

  /** A token from `?token=...` (the address `srgan serve` prints), kept for this tab and taken off
      the address bar. The server also sets a cookie from it; the header works either way. */
  function readToken() {
    let token = null;
    try {
      const params = new URLSearchParams(location.search);
      token = params.get("token");
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        params.delete("token");
        const query = params.toString();
        history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
      } else {
        token = sessionStorage.getItem(TOKEN_KEY);
      }
    } catch (_) {
      /* storage off: the cookie still works */
    }
    return token || null;
  }

  function authHeaders() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function api(path, options = {}) {
    return fetch(path, {
      ...options,
      headers: { ...authHeaders(), ...(options.headers || {}) },
      credentials: "same-origin",
      cache: "no-store",
    });
  }

  /** {error, hint, status} from an error answer: the server's JSON sentence when there is one. */
  function errorFromText(status, statusText, text) {
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      /* not JSON */
    }
    if (body && typeof body.error === "string") {
      return { error: body.error, hint: body.hint || null, status };
    }
    if (body && body.detail !== undefined) {
      // FastAPI's own validation answer
      const detail = Array.isArray(body.detail)
        ? body.detail.map((d) => (d.loc ? d.loc.join(".") + ": " : "") + d.msg).join("; ")
        : String(body.detail);
      return { error: detail, hint: null, status };
    }
    return { error: `the server answered ${status} ${statusText || ""}`.trim(), hint: null, status };
  }

  async function errorOf(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (_) {
      /* no body */
    }
    return errorFromText(response.status, response.statusText, text);
  }

  class JobError extends Error {
    constructor(info) {
      super(info.error);
      this.info = info;
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- small helpers -------------------------------------------------------------------------

  function formatBytes(n) {
    const short = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${short(n / 1024)} KiB`;
    if (n < 1024 ** 3) return `${short(n / 1024 ** 2)} MiB`;
    return `${short(n / 1024 ** 3)} GiB`;
  }

  const num = (x) => String(Number(Number(x).toFixed(3))); // 4, 2.5, 1.333

  function announce(message) {
    el.announce.textContent = "";
    setTimeout(() => {
      el.announce.textContent = message;
    }, 50);
  }

  function showNotice(html) {
    el.notice.innerHTML = html;
    el.notice.hidden = false;
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function needsToken() {
    showNotice(
      "<strong>This server needs a token.</strong> Open the address that <code>srgan serve</code> " +
        "printed when it started: it ends in <code>?token=…</code>. After that, this page works " +
        "without it until the browser is closed.",
    );
  }

  function safeName(name) {
    // an entry of the zip and a download name: no folders, no control characters
    const cleaned = String(name).replace(/[\u0000-\u001f\u007f/\\:*?"<>|]+/g, "_").replace(/^\.+/, "");
    return cleaned || "image";
  }

  // --- start: health and models --------------------------------------------------------------

  async function start() {
    wireControls();
    let models;
    try {
      const response = await api("/api/models");
      if (response.status === 401) {
        needsToken();
        el.serverInfo.textContent = "Token needed";
        el.model.innerHTML = "<option value=''>No access</option>";
        return;
      }
      if (!response.ok) throw new JobError(await errorOf(response));
      models = await response.json();
    } catch (err) {
      const info = err instanceof JobError ? err.info : { error: "cannot reach the server", hint: null };
      showNotice(
        `<strong>The models could not be listed:</strong> ${escapeHtml(info.error)}` +
          (info.hint ? ` <span class="hint">${escapeHtml(info.hint)}</span>` : "") +
          " Is <code>srgan serve</code> still running? Reload the page to try again.",
      );
      el.serverInfo.textContent = "Not connected";
      el.model.innerHTML = "<option value=''>No models</option>";
      return;
    }
    fillModels(models);
    state.ready = true;
    el.files.disabled = false;
    health();
  }

  function fillModels(doc) {
    state.models = Array.isArray(doc.models) ? doc.models : [];
    el.model.innerHTML = "";
    for (const m of state.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.scale ? `${m.name} (×${m.scale})` : `${m.name} (scale unknown)`;
      if (m.kind === "auto") {
        option.textContent += ": per image";
        if (m.about) option.title = m.about;
      }
      if (m.name === doc.default) option.selected = true;
      el.model.append(option);
    }
    if (!state.models.length) {
      el.model.innerHTML = "<option value=''>No models on this server</option>";
      showNotice("<strong>This server lists no models.</strong> Start it with <code>srgan serve -m MODEL</code>.");
    }
    el.model.disabled = state.models.length === 0;
    modelChanged();
  }

  async function health() {
    try {
      const response = await api("/api/health");
      if (!response.ok) return;
      const doc = await response.json();
      const devices = [...new Set((doc.loaded || []).map((m) => m.device).filter(Boolean))];
      el.serverInfo.textContent =
        `Server ${doc.version ? "v" + doc.version : ""}` + (devices.length ? ` · ${devices.join(", ")}` : "");
      if (doc.limits && typeof doc.limits === "object") {
        state.limits = doc.limits;
        const parts = [];
        if (doc.limits.max_upload_bytes) parts.push(`up to ${formatBytes(doc.limits.max_upload_bytes)} a file`);
        if (doc.limits.max_input_pixels) parts.push(`${num(doc.limits.max_input_pixels / 1e6)} MP in`);
        if (doc.limits.max_output_pixels) parts.push(`${num(doc.limits.max_output_pixels / 1e6)} MP out`);
        el.limits.textContent = parts.length ? `PNG, JPEG, WebP…: ${parts.join(", ")}` : "";
      }
    } catch (_) {
      /* the page works without it */
    }
  }

  // --- the options ---------------------------------------------------------------------------

  function modelScale(name) {
    const m = state.models.find((x) => x.name === name);
    return m && m.scale ? Number(m.scale) : null;
  }

  /** Whether a model has a restoration front-end whose strength a request may set. */
  function modelDenoises(name) {
    const m = state.models.find((x) => x.name === name);
    return Boolean(m && m.denoise);
  }

  function modelChanged() {
    const scale = modelScale(el.model.value);
    el.outscale.options[0].textContent = scale ? `Model's own (×${scale})` : "Model's own";
    el.denoiseField.hidden = !modelDenoises(el.model.value);
  }

  function denoiseChanged() {
    el.denoiseValue.textContent = `${Math.round(Number(el.denoise.value) * 100)}%`;
  }

  function formatChanged() {
    el.qualityField.hidden = el.format.value === "png";
  }

  function currentOptions() {
    return {
      model: el.model.value,
      modelScale: modelScale(el.model.value),
      outscale: el.outscale.value ? Number(el.outscale.value) : null,
      format: el.format.value,
      quality: Number(el.quality.value),
      // the model as trained (1) is sent as no strength at all: the server's warm model serves it
      denoise: modelDenoises(el.model.value) && Number(el.denoise.value) < 1 ? Number(el.denoise.value) : null,
    };
  }

  function describeOptions(o) {
    const scale = o.outscale ? `×${num(o.outscale)}` : o.modelScale ? `×${o.modelScale}` : "model's scale";
    const fmt = o.format === "png" ? "PNG" : `${o.format === "jpg" ? "JPEG" : "WebP"} ${o.quality}`;
    const denoise = o.denoise !== null ? ` · noise removal ${Math.round(o.denoise * 100)}%` : "";
    return `${o.model} · ${scale}${denoise} · ${fmt}`;
  }

  // --- the files -----------------------------------------------------------------------------

  function addFiles(fileList) {
    if (!state.ready) {
      announce("The server is not ready: the page cannot take images yet.");
      return;
    }
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const options = currentOptions();
    for (const file of files) addJob(file, options);
    announce(`${files.length} ${files.length === 1 ? "file" : "files"} added`);
    pump();
  }

  function addJob(file, options) {
    const node = el.template.content.firstElementChild.cloneNode(true);
    const job = {
      key: state.nextId++,
      file,
      options,
      state: "waiting",
      serverId: null,
      xhr: null,
      removed: false,
      origUrl: URL.createObjectURL(file),
      origSize: null,
      resultUrl: null,
      resultBlob: null,
      resultName: null,
      resultSize: null,
      node,
      q: (sel) => node.querySelector(sel),
    };
    node.dataset.key = job.key;
    job.q(".job-name").textContent = file.name;
    job.q(".job-opts").textContent = describeOptions(options);
    job.q("progress").setAttribute("aria-label", `Progress of ${file.name}`);
    const thumb = job.q(".thumb");
    thumb.addEventListener("error", () => {
      thumb.style.visibility = "hidden";
    });
    thumb.src = job.origUrl;
    const probe = new Image();
    probe.onload = () => {
      job.origSize = { w: probe.naturalWidth, h: probe.naturalHeight };
      job.q(".job-opts").textContent = `${describeOptions(options)} · ${job.origSize.w}×${job.origSize.h}`;
    };
    probe.src = job.origUrl;

    job.q(".remove").addEventListener("click", () => removeJob(job, true));
    job.q(".retry").addEventListener("click", () => {
      resetJob(job);
      pump();
    });
    job.q(".compare").addEventListener("click", () => showInViewer(job, true));
    job.q(".remove").setAttribute("aria-label", `Remove ${file.name}`);
    job.q(".retry").setAttribute("aria-label", `Retry ${file.name}`);
    job.q(".compare").setAttribute("aria-label", `Compare ${file.name}`);

    const type = file.type || "";
    const limit = state.limits && state.limits.max_upload_bytes;
    state.jobs.push(job);
    el.jobs.append(node);
    if (type && !type.startsWith("image/")) {
      fail(job, { error: `${file.name} is not an image (${type})`, hint: "pick PNG, JPEG, WebP or another image" });
    } else if (limit && file.size > limit) {
      fail(job, {
        error: `the file is ${formatBytes(file.size)}, above this server's upload limit of ${formatBytes(limit)}`,
        hint: "make it smaller first, or start the server with a higher limit",
      });
    } else {
      setState(job, "waiting", "waiting", 0);
    }
  }

  function setState(job, status, text, progress) {
    job.state = status;
    job.node.dataset.state = status;
    job.q(".job-status").textContent = text;
    const bar = job.q("progress");
    if (progress === null) bar.removeAttribute("value");
    else if (typeof progress === "number") bar.value = Math.max(0, Math.min(1, progress));
    updateSummary();
  }

  function fail(job, info) {
    setState(job, "failed", `failed: ${info.error}`, 0);
    const hint = job.q(".job-hint");
    hint.textContent = info.hint ? `Hint: ${info.hint}` : "";
    hint.hidden = !info.hint;
    job.q(".retry").hidden = false;
    announce(`${job.file.name} failed: ${info.error}`);
    if (info.status === 401) needsToken();
  }

  function resetJob(job) {
    job.q(".job-hint").hidden = true;
    job.q(".retry").hidden = true;
    job.serverId = null;
    setState(job, "waiting", "waiting", 0);
  }

  function removeJob(job, byUser) {
    job.removed = true;
    if (job.xhr) job.xhr.abort();
    if (job.serverId && job.state !== "done" && job.state !== "failed") forgetLater(job.serverId);
    const index = state.jobs.indexOf(job);
    if (index >= 0) state.jobs.splice(index, 1);
    if (state.selected === job) hideViewer();
    URL.revokeObjectURL(job.origUrl);
    if (job.resultUrl) URL.revokeObjectURL(job.resultUrl);
    const next = job.node.nextElementSibling || job.node.previousElementSibling;
    job.node.remove();
    updateSummary();
    if (byUser) {
      announce(`${job.file.name} removed`);
      const target = next ? next.querySelector(".remove") : el.files;
      if (target) target.focus();
    }
  }

  function updateSummary() {
    const count = (s) => state.jobs.filter((j) => j.state === s).length;
    const done = count("done");
    const failed = count("failed");
    const busy = state.jobs.length - done - failed;
    const parts = [];
    if (done) parts.push(`${done} done`);
    if (busy) parts.push(`${busy} in progress`);
    if (failed) parts.push(`${failed} failed`);
    el.summary.textContent = parts.join(", ");
    el.downloadAll.disabled = done === 0;
    el.clear.disabled = done + failed === 0;
  }

  // --- running a file ------------------------------------------------------------------------

  function pump() {
    while (state.active < MAX_ACTIVE) {
      const job = state.jobs.find((j) => j.state === "waiting");
      if (!job) return;
      state.active += 1;
      setState(job, "uploading", "uploading 0%", 0);
      run(job)
        .catch((err) => {
          if (!job.removed) fail(job, err instanceof JobError ? err.info : { error: String(err.message || err) });
        })
        .finally(() => {
          state.active -= 1;
          pump();
        });
    }
  }

  async function run(job) {
    job.serverId = await submit(job);
    if (job.removed) return forgetLater(job.serverId);
    const doc = await poll(job);
    if (job.removed) return;
    setState(job, "fetching", "downloading the result", 1);
    const response = await api(doc.result || `/api/jobs/${encodeURIComponent(job.serverId)}/result`);
    if (!response.ok) throw new JobError(await errorOf(response));
    const blob = await response.blob();
    forget(job.serverId); // the server may free it now
    if (job.removed) return;
    await finish(job, doc, blob);
  }

  /** POST /api/jobs, waiting and retrying while the server answers 429; the job's id. */
  async function submit(job) {
    for (let attempt = 0; ; attempt++) {
      const answer = await upload(job);
      if (answer.status === 202 || answer.status === 200) {
        const doc = JSON.parse(answer.text);
        return doc.id;
      }
      if (answer.status === 429 && attempt < BUSY_RETRIES) {
        setState(job, "busy", `server busy, retrying (${attempt + 1}/${BUSY_RETRIES})`, null);
        if (attempt === 0) announce(`${job.file.name}: server busy, retrying`);
        await sleep(BUSY_WAIT_MS);
        if (job.removed) throw new JobError({ error: "removed" });
        continue;
      }
      if (answer.status === 0) {
        throw new JobError({ error: "the upload failed: the server cannot be reached", hint: "is srgan serve still running?" });
      }
      throw new JobError(errorFromText(answer.status, answer.statusText, answer.text));
    }
  }

  function upload(job) {
    return new Promise((resolve) => {
      const o = job.options;
      const form = new FormData();
      form.append("image", job.file, job.file.name);
      if (o.model) form.append("model", o.model);
      if (o.outscale) form.append("outscale", String(o.outscale));
      form.append("format", o.format);
      if (o.format !== "png") form.append("quality", String(o.quality));
      if (o.denoise !== null) form.append("denoise", String(o.denoise));
      const xhr = new XMLHttpRequest();
      job.xhr = xhr;
      xhr.open("POST", "/api/jobs");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable && e.total > 0) {
          const f = e.loaded / e.total;
          setState(job, "uploading", `uploading ${Math.round(f * 100)}%`, f);
        }
      };
      const done = () => {
        job.xhr = null;
        resolve({ status: xhr.status, statusText: xhr.statusText, text: xhr.responseText || "" });
      };
      xhr.onload = done;
      xhr.onerror = done;
      xhr.onabort = done;
      xhr.send(form);
    });
  }

  /** GET /api/jobs/{id} every POLL_MS until done (its document) or failed (a JobError). */
  async function poll(job) {
    let errors = 0;
    const url = `/api/jobs/${encodeURIComponent(job.serverId)}`;
    setState(job, "queued", "queued", null);
    for (;;) {
      if (job.removed) throw new JobError({ error: "removed" });
      let response = null;
      try {
        response = await api(url);
      } catch (_) {
        response = null;
      }
      if (response && response.ok) {
        errors = 0;
        const doc = await response.json();
        if (doc.status === "done") return doc;
        if (doc.status === "failed") {
          forget(job.serverId); // its error is read: the server may drop it
          throw new JobError({ error: doc.error || "the job failed", hint: doc.hint || null, status: doc.status_code });
        }
        if (doc.status === "running") {
          const p = typeof doc.progress === "number" ? doc.progress : null;
          setState(job, "running", p === null ? "running" : `running ${Math.round(p * 100)}%`, p);
        } else {
          // position: how many jobs wait before this one (0: it runs next)
          const p = doc.position;
          const where = !Number.isInteger(p) ? "" : p === 0 ? ", next in line" : `, ${p} ahead`;
          setState(job, "queued", `queued${where}`, null);
        }
      } else if (response && (response.status === 404 || response.status === 401 || response.status === 403)) {
        throw new JobError(await errorOf(response));
      } else if (++errors >= POLL_ERRORS) {
        throw new JobError(
          response ? await errorOf(response) : { error: "the server cannot be reached", hint: "is srgan serve still running?" },
        );
      }
      await sleep(POLL_MS);
    }
  }

  /** DELETE /api/jobs/{id}: the server frees the result (a 404/405 from an older server is fine). */
  function forget(id) {
    if (!id) return;
    api(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
  }

  /** A job removed from the page before it finished: the server only forgets finished jobs (409
      before), so wait for the end, quietly, then DELETE it. */
  async function forgetLater(id) {
    if (!id) return;
    const url = `/api/jobs/${encodeURIComponent(id)}`;
    for (let i = 0; i < 600; i++) {
      try {
        const response = await api(url);
        if (!response.ok) return; // gone already (404), or not ours to ask about
        const doc = await response.json();
        if (doc.status === "done" || doc.status === "failed") return forget(id);
      } catch (_) {
        return;
      }
      await sleep(1000);
    }
  }

  function imageSize(url) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve({ w: img.naturalWidth, h: img.naturalHeight });
      img.onerror = () => resolve(null);
      img.src = url;
    });
  }

  function fallbackName(job, size) {
    const o = job.options;
    const base = job.file.name.replace(/\.[^.]*$/, "") || "image";
    let scale = o.outscale || o.modelScale;
    if (!scale && size && job.origSize) scale = size.w / job.origSize.w;
    const label = scale ? num(scale) : "up";
    return `${base}_x${label}.${o.format}`;
  }

  async function finish(job, doc, blob) {
    job.resultBlob = blob;
    job.resultUrl = URL.createObjectURL(blob);
    let size = null;
    const m = /^(\d+)x(\d+)$/.exec(doc.size || "");
    if (m) size = { w: Number(m[1]), h: Number(m[2]) };
    else size = await imageSize(job.resultUrl);
    job.resultSize = size;
    job.resultName = safeName(doc.name || fallbackName(job, size));
    const sizeText = size ? `${size.w}×${size.h}` : "unknown size";
    job.node.dataset.size = size ? `${size.w}x${size.h}` : "";
    job.node.dataset.name = job.resultName;

    const link = job.q(".download");
    link.href = job.resultUrl;
    link.download = job.resultName;
    link.textContent = "Download";
    link.setAttribute("aria-label", `Download ${job.resultName}`);
    link.title = job.resultName;
    link.hidden = false;
    job.q(".compare").hidden = false;
    job.q(".thumb").src = job.resultUrl;
    job.q(".thumb").style.visibility = "";
    const by = doc.model && doc.model !== job.options.model ? ` by ${doc.model}` : "";
    setState(job, "done", `done${by}: ${sizeText}, ${formatBytes(blob.size)} (${job.resultName})`, 1);
    announce(`${job.file.name} done: ${sizeText}`);
    if (!state.selected) showInViewer(job, false);
  }

  // --- the before/after viewer ---------------------------------------------------------------

  function showInViewer(job, focus) {
    if (!job.resultUrl) return;
    if (state.selected) state.selected.node.classList.remove("selected");
    state.selected = job;
    job.node.classList.add("selected");
    el.before.hidden = false;
    el.after.src = job.resultUrl;
    el.before.src = job.origUrl;
    const from = job.origSize ? `${job.origSize.w}×${job.origSize.h}` : "original";
    const to = job.resultSize ? `${job.resultSize.w}×${job.resultSize.h}` : "result";
    el.viewerName.textContent = `${job.file.name}: ${from} → ${to} (${job.resultName})`;
    el.viewer.hidden = false;
    el.main.classList.add("comparing");
    if (focus) {
      el.viewer.scrollIntoView({ block: "start" });
      el.split.focus();
    }
  }

  function hideViewer() {
    if (state.selected) state.selected.node.classList.remove("selected");
    state.selected = null;
    el.viewer.hidden = true;
    el.main.classList.remove("comparing");
    el.after.removeAttribute("src");
    el.before.removeAttribute("src");
    const next = state.jobs.find((j) => j.state === "done");
    if (next) showInViewer(next, false);
  }

  function setSplit(value, fromSlider) {
    const v = Math.max(0, Math.min(100, Number(value)));
    el.stage.style.setProperty("--split", `${Number(v.toFixed(2))}%`);
    if (!fromSlider) el.split.value = String(Math.round(v));
    const shown = Math.round(v);
    el.split.setAttribute("aria-valuetext", `${shown}% original, ${100 - shown}% upscaled`);
  }

  function wireViewer() {
    el.split.addEventListener("input", () => setSplit(el.split.value, true));
    setSplit(el.split.value, true);
    el.fit.addEventListener("change", () => {
      el.stage.classList.toggle("fit", el.fit.checked);
      el.sizeHelp.textContent = el.fit.checked
        ? "The upscaled image is scaled down to fit; clear “Fit to screen” to see its full pixel size."
        : "The upscaled image is shown at its full pixel size; scroll inside the frame to see all of it.";
      sizeTags();
    });
    el.pixelated.addEventListener("change", () => el.stage.classList.toggle("pixelated", el.pixelated.checked));
    el.after.addEventListener("load", sizeTags);
    el.before.addEventListener("error", () => {
      if (el.before.getAttribute("src")) {
        el.before.hidden = true;
        el.viewerName.textContent += " (this browser cannot show the original)";
      }
    });

    // Pointer: a mouse anywhere on the image, a finger or pen on the line (elsewhere it scrolls).
    let dragging = null;
    const moveTo = (e) => {
      const rect = el.stage.getBoundingClientRect();
      if (rect.width > 0) setSplit(((e.clientX - rect.left) / rect.width) * 100, false);
    };
    el.stage.addEventListener("pointerdown", (e) => {
      const onLine = el.divider.contains(e.target);
      if (e.pointerType === "mouse" ? e.button !== 0 : !onLine) return;
      dragging = e.pointerId;
      try {
        el.stage.setPointerCapture(e.pointerId);
      } catch (_) {
        /* a pointer the browser no longer tracks: the moves still arrive while it is over the image */
      }
      moveTo(e);
      e.preventDefault();
    });
    el.stage.addEventListener("pointermove", (e) => {
      if (dragging === e.pointerId) moveTo(e);
    });
    const stop = (e) => {
      if (dragging === e.pointerId) dragging = null;
    };
    el.stage.addEventListener("pointerup", stop);
    el.stage.addEventListener("pointercancel", stop);
  }

  function sizeTags() {
    el.stage.classList.toggle("small", el.after.getBoundingClientRect().width < 240);
  }

  // --- ZIP (stored, no compression: PNG, JPEG and WebP are compressed already) ----------------

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function dosTime(d) {
    const year = Math.max(1980, d.getFullYear());
    return {
      time: (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1),
      date: ((year - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate(),
    };
  }

  /** A ZIP file (a Blob) of [{name, data: Uint8Array}], every entry stored. */
  function makeZip(entries, when = new Date()) {
    const encoder = new TextEncoder();
    const { time, date } = dosTime(when);
    const LIMIT = 0xffffffff;
    if (entries.length > 0xfffe) throw new Error("too many files for one zip: download them in parts");
    const parts = [];
    const central = [];
    let offset = 0;
    for (const entry of entries) {
      const name = encoder.encode(entry.name);
      const size = entry.data.length;
      const crc = crc32(entry.data);
      if (size >= LIMIT || offset + 30 + name.length + size >= LIMIT) {
        throw new Error("the results are too large for one zip (4 GiB): download them one by one");
      }
      const local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true); // local file header
      local.setUint16(4, 20, true); // version needed: 2.0
      local.setUint16(6, 0x0800, true); // flags: UTF-8 names
      local.setUint16(8, 0, true); // stored
      local.setUint16(10, time, true);
      local.setUint16(12, date, true);
      local.setUint32(14, crc, true);
      local.setUint32(18, size, true);
      local.setUint32(22, size, true);
      local.setUint16(26, name.length, true);
      local.setUint16(28, 0, true);
      parts.push(local, name, entry.data);

      const head = new DataView(new ArrayBuffer(46));
      head.setUint32(0, 0x02014b50, true); // central directory header
      head.setUint16(4, 20, true); // made by: 2.0, MS-DOS attributes
      head.setUint16(6, 20, true);
      head.setUint16(8, 0x0800, true);
      head.setUint16(10, 0, true);
      head.setUint16(12, time, true);
      head.setUint16(14, date, true);
      head.setUint32(16, crc, true);
      head.setUint32(20, size, true);
      head.setUint32(24, size, true);
      head.setUint16(28, name.length, true);
      head.setUint16(30, 0, true); // extra
      head.setUint16(32, 0, true); // comment
      head.setUint16(34, 0, true); // disk
      head.setUint16(36, 0, true); // internal attributes
      head.setUint32(38, 0, true); // external attributes
      head.setUint32(42, offset, true);
      central.push(head, name);
      offset += 30 + name.length + size;
    }
    const centralSize = central.reduce((n, part) => n + part.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true); // end of central directory
    end.setUint16(4, 0, true);
    end.setUint16(6, 0, true);
    end.setUint16(8, entries.length, true);
    end.setUint16(10, entries.length, true);
    end.setUint32(12, centralSize, true);
    end.setUint32(16, offset, true);
    end.setUint16(20, 0, true);
    return new Blob([...parts, ...central, end], { type: "application/zip" });
  }

  /** photo_x4.png, photo_x4-2.png, ...: names unique within one zip (case-insensitively). */
  function uniqueNames(names) {
    const used = new Set();
    return names.map((name) => {
      const dot = name.lastIndexOf(".");
      const stem = dot > 0 ? name.slice(0, dot) : name;
      const ext = dot > 0 ? name.slice(dot) : "";
      let candidate = name;
      for (let i = 2; used.has(candidate.toLowerCase()); i++) candidate = `${stem}-${i}${ext}`;
      used.add(candidate.toLowerCase());
      return candidate;
    });
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  async function downloadAll() {
    const done = state.jobs.filter((j) => j.state === "done" && j.resultBlob);
    if (!done.length) return;
    el.downloadAll.disabled = true;
    const label = el.downloadAll.textContent;
    el.downloadAll.textContent = "Making the zip…";
    try {
      const names = uniqueNames(done.map((j) => j.resultName));
      const entries = [];
      for (let i = 0; i < done.length; i++) {
        entries.push({ name: names[i], data: new Uint8Array(await done[i].resultBlob.arrayBuffer()) });
      }
      saveBlob(makeZip(entries), "srgan-upscaled.zip");
      announce(`zip of ${entries.length} ${entries.length === 1 ? "image" : "images"} saved`);
    } catch (err) {
      showNotice(`<strong>The zip could not be made:</strong> ${escapeHtml(err.message || err)}`);
    } finally {
      el.downloadAll.textContent = label;
      updateSummary();
    }
  }

  // --- wiring --------------------------------------------------------------------------------

  function wireControls() {
    el.files.disabled = true;
    el.model.addEventListener("change", modelChanged);
    el.format.addEventListener("change", formatChanged);
    el.quality.addEventListener("input", () => {
      el.qualityValue.textContent = el.quality.value;
    });
    formatChanged();
    el.denoise.addEventListener("input", denoiseChanged);
    denoiseChanged();

    el.files.addEventListener("change", () => {
      addFiles(el.files.files);
      el.files.value = "";
    });
    el.files.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        el.files.click();
      }
    });

    // drag and drop anywhere on the page
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = state.ready ? "copy" : "none";
    });
    document.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) document.body.classList.remove("dragging");
    });
    document.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      document.body.classList.remove("dragging");
      addFiles(e.dataTransfer.files);
    });

    el.downloadAll.addEventListener("click", downloadAll);
    el.clear.addEventListener("click", () => {
      for (const job of state.jobs.filter((j) => j.state === "done" || j.state === "failed")) removeJob(job, false);
      announce("finished files cleared");
      el.files.focus();
    });
    wireViewer();
  }

  // for tests and the curious: the zip writer and CRC-32 on their own
  window.srgan = { crc32, makeZip, uniqueNames };

  start();
})();
