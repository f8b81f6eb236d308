// diag ui: the page. Plain JavaScript, no external assets; talks to /api/* on the same host.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ui = {
  spec: null, which: "negatives", offset: 0, total: 0, per: 48, filter: "",
  image: null, imageSize: null, positive: null, tool: "brush", zoom: 1, dirty: false,
  drawing: false, last: null, rectStart: null, busy: false, regions: {}, kinds: [],
};

// ------------------------------------------------------------------ messages
function showMessage(text, kind = "error") {
  const box = $("#message");
  $("#message-text").textContent = text;
  box.className = kind === "error" ? "" : "info";
  box.hidden = false;
}
function clearMessage() { $("#message").hidden = true; }
function status(text) { $("#status").textContent = text; }

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try { resp = await fetch(url, opts); } catch (e) { throw new Error("the diag ui server does not answer: is it still running?"); }
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const err = new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
    err.data = data;
    throw err;
  }
  return data;
}
async function guarded(fn) {
  try { return await fn(); } catch (e) { showMessage(e.message); return null; }
}

// ---------------------------------------------------------------------- jobs
async function runJob(job, label, onDone) {
  const bar = $("#progress");
  bar.hidden = false;
  setBusy(true);
  try {
    for (;;) {
      const j = await api("GET", `/api/job?id=${job.id}`);
      bar.max = Math.max(1, j.total); bar.value = j.done;
      status(`${label}: ${j.state}${j.total ? ` ${Math.floor(j.done)}/${j.total}` : ""}`);
      if (j.state === "done") { status(j.message); await onDone(j.result); return j; }
      if (j.state === "failed") { status(`${label} failed`); showMessage(j.message); return j; }
      await new Promise((r) => setTimeout(r, 300));
    }
  } finally { bar.hidden = true; setBusy(false); }
}
function setBusy(b) {
  ui.busy = b;
  for (const id of ["#preview", "#run-batch"]) $(id).disabled = b;
}

// ------------------------------------------------------------------- browser
async function loadThumbs() {
  const q = new URLSearchParams({ which: ui.which, offset: ui.offset, limit: ui.per, q: ui.filter });
  const ticket = (ui.thumbTicket = (ui.thumbTicket || 0) + 1);
  const data = await guarded(() => api("GET", `/api/images?${q}`));
  if (!data || ticket !== ui.thumbTicket) return; // a newer listing was asked for
  ui.total = data.total;
  const box = $("#thumbs");
  box.textContent = "";
  for (const item of data.items) {
    const div = document.createElement("div");
    div.className = "thumb";
    div.dataset.id = item.id;
    div.title = item.id + (item.defect ? ` (${item.defect})` : "");
    if (item.id === ui.image || item.id === ui.positive) div.classList.add("selected");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = item.id;
    img.src = `/api/image?thumb=1&id=${encodeURIComponent(item.id)}`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = item.stem;
    img.addEventListener("error", () => { div.classList.add("broken"); label.textContent = `unreadable: ${item.stem}`; });
    div.append(img, label);
    if (ui.which === "negatives" && paintedStems().has(item.stem)) {
      const dot = document.createElement("span"); dot.className = "dot"; dot.title = "has a painted region"; div.append(dot);
    }
    div.addEventListener("click", () => (ui.which === "negatives" ? openImage(item.id) : openPositive(item.id)));
    box.append(div);
  }
  const pages = Math.max(1, Math.ceil(ui.total / ui.per));
  $("#page").textContent = `page ${Math.floor(ui.offset / ui.per) + 1} of ${pages} (${ui.total})`;
  $("#prev").disabled = ui.offset === 0;
  $("#next").disabled = ui.offset + ui.per >= ui.total;
}
function paintedStems() {
  return new Set(ui.regions[currentSet()] || []);
}

function loadPicture(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = async () => {
      let msg = "cannot load the image";
      try { msg = (await (await fetch(url)).json()).error || msg; } catch (e) { /* keep msg */ }
      reject(new Error(msg));
    };
    img.src = url;
  });
}

async function openImage(id) {
  if (ui.dirty && ui.image && !confirm("The painted region is not saved. Open another image anyway?")) return;
  clearMessage();
  let img;
  try { img = await loadPicture(`/api/image?id=${encodeURIComponent(id)}`); } catch (e) { showMessage(e.message); return; }
  ui.image = id; ui.lastImage = id; ui.positive = null;
  drawBase(img);
  await loadRegion();
  $("#current").textContent = `${id}: ${img.naturalWidth}x${img.naturalHeight}`;
  markSelected();
}

async function openPositive(id) {
  // show a real defect with its mask (view only); its mask can seed the next painting
  if (ui.dirty && ui.image && !confirm("The painted region is not saved. Show this defect anyway?")) return;
  clearMessage();
  let img, mask;
  try {
    img = await loadPicture(`/api/image?id=${encodeURIComponent(id)}`);
    mask = await loadPicture(`/api/mask?id=${encodeURIComponent(id)}`);
  } catch (e) { showMessage(e.message); return; }
  if (ui.image) ui.lastImage = ui.image;
  ui.image = null; ui.positive = id; ui.positiveMask = mask;
  drawBase(img); drawMaskImage(mask); ui.dirty = false;
  $("#current").textContent = `real defect ${id} (view only): "start from real mask" puts this mask on ` +
    (ui.lastImage ? ui.lastImage : "the next defect-free image you open");
  markSelected();
}

function markSelected() {
  for (const t of document.querySelectorAll(".thumb")) t.classList.toggle("selected", t.dataset.id === ui.image || t.dataset.id === ui.positive);
}

// ------------------------------------------------------------------- painter
const imageCanvas = () => $("#image-canvas");
const maskCanvas = () => $("#mask-canvas");

function drawBase(img) {
  const [ic, mc] = [imageCanvas(), maskCanvas()];
  for (const c of [ic, mc]) { c.width = img.naturalWidth; c.height = img.naturalHeight; }
  ic.getContext("2d").drawImage(img, 0, 0);
  mc.getContext("2d").clearRect(0, 0, mc.width, mc.height);
  ui.imageSize = [img.naturalWidth, img.naturalHeight];
  $("#stage-hint").hidden = true;
  if (ui.zoom === 1) fitZoom(); else applyZoom();
  ui.dirty = false;
}

function drawMaskImage(img) {
  // a 0/255 mask PNG -> opaque red where white, transparent elsewhere (scaled to the image)
  const mc = maskCanvas();
  const tmp = document.createElement("canvas");
  tmp.width = mc.width; tmp.height = mc.height;
  const t = tmp.getContext("2d");
  t.imageSmoothingEnabled = false;
  t.drawImage(img, 0, 0, mc.width, mc.height);
  const data = t.getImageData(0, 0, mc.width, mc.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const on = px[i] >= 128;
    px[i] = 255; px[i + 1] = 32; px[i + 2] = 32; px[i + 3] = on ? 255 : 0;
  }
  mc.getContext("2d").putImageData(data, 0, 0);
}

async function loadRegion() {
  const mc = maskCanvas();
  mc.getContext("2d").clearRect(0, 0, mc.width, mc.height);
  ui.dirty = false;
  if (!ui.image) return;
  const target = scope() === "default" ? "default" : ui.image;
  const url = `/api/region?set=${encodeURIComponent(currentSet())}&image=${encodeURIComponent(target)}`;
  const resp = await fetch(url);
  if (resp.ok) drawMaskImage(await loadPicture(URL.createObjectURL(await resp.blob())));
}

function scope() { return $("#scope-all").checked ? "default" : "image"; }
function currentSet() { return $("#region-set").value || "defect"; }

function toImage(e) {
  const mc = maskCanvas();
  const r = mc.getBoundingClientRect();
  return [(e.clientX - r.left) * mc.width / r.width, (e.clientY - r.top) * mc.height / r.height];
}
function strokeTo(p) {
  const ctx = maskCanvas().getContext("2d");
  ctx.globalCompositeOperation = ui.tool === "eraser" ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "rgb(255,32,32)";
  ctx.lineWidth = Number($("#brush-size").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  const a = ui.last || p;
  ctx.moveTo(a[0], a[1]); ctx.lineTo(p[0] + 0.01, p[1]);
  ctx.stroke();
  ui.last = p;
  ui.dirty = true;
}
function onDown(e) {
  if (!ui.imageSize || !ui.image) return;
  e.preventDefault();
  maskCanvas().setPointerCapture(e.pointerId);
  ui.drawing = true;
  const p = toImage(e);
  if (ui.tool === "rect") { ui.rectStart = p; return; }
  ui.last = null; strokeTo(p);
}
function onMove(e) { if (ui.drawing && ui.tool !== "rect") strokeTo(toImage(e)); }
function onUp(e) {
  if (!ui.drawing) return;
  ui.drawing = false; ui.last = null;
  if (ui.tool === "rect" && ui.rectStart) {
    const [a, b] = [ui.rectStart, toImage(e)];
    const ctx = maskCanvas().getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "rgb(255,32,32)";
    ctx.fillRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]) || 1, Math.abs(b[1] - a[1]) || 1);
    ui.rectStart = null; ui.dirty = true;
  }
}

function applyZoom() {
  const [w, h] = ui.imageSize || [0, 0];
  for (const c of [imageCanvas(), maskCanvas()]) { c.style.width = `${w * ui.zoom}px`; c.style.height = `${h * ui.zoom}px`; }
  $("#zoom-value").textContent = `${Math.round(ui.zoom * 100)}%`;
}
function fitZoom() {
  if (!ui.imageSize) return;
  const wrap = $("#canvas-wrap");
  ui.zoom = Math.min(8, Math.max(0.05, Math.min((wrap.clientWidth - 4) / ui.imageSize[0], 520 / ui.imageSize[1])));
  applyZoom();
}

async function saveRegion() {
  if (!ui.image) { showMessage("choose a defect-free image first"); return false; }
  const body = { set: currentSet(), image: scope() === "default" ? "default" : ui.image, png: maskCanvas().toDataURL("image/png") };
  const r = await guarded(() => api("POST", "/api/region", body));
  if (!r) return false;
  ui.regions = r.regions; ui.dirty = false;
  status(r.pixels ? `region saved (${r.pixels} px)` : "region cleared");
  loadThumbs();
  return true;
}

// ---------------------------------------------------------------- the spec
function renderSpec(spec) {
  ui.spec = spec;
  const box = $("#defects");
  box.textContent = "";
  spec.defects.forEach((d, i) => box.append(defectCard(d, i)));
  const g = spec.generator || {};
  $("#gen-kind").value = g.kind || "memseg";
  $("#gen-model").value = g.model || "";
  $("#gen-steps").value = g.steps ?? "";
  $("#gen-guidance").value = g.guidance_scale ?? "";
  $("#gen-strength").value = g.strength ?? "";
  $("#gen-adapter").value = g.adapter || "";
  $("#spec-seed").value = spec.seed ?? 0;
  $("#gen-diffusion").hidden = $("#gen-kind").value !== "diffusion";
  renderSets();
  const sel = $("#preview-defect"), keep = sel.value;
  sel.textContent = "";
  for (const d of spec.defects) sel.append(new Option(d.name, d.name));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

function defectCard(d, i) {
  const div = document.createElement("div");
  div.className = "defect";
  div.dataset.index = i;
  div.innerHTML = `
    <div class="row"><input class="d-name" type="text" placeholder="name (crack)" style="width:55%">
      <label>count <input class="d-count" type="number" min="0" style="width:70px"></label>
      <button class="d-remove" title="remove this defect type">×</button></div>
    <textarea class="d-prompt" placeholder="describe the defect: a thin dark crack in the grey surface"></textarea>
    <input class="d-negative" type="text" placeholder="negative prompt (smooth, plain)">
    <div class="row"><label>regions <select class="d-region">
      <option value="painted">painted (as drawn)</option><option value="painted-area">painted area (random shapes inside)</option>
      <option value="real-masks">real defect masks</option><option value="shapes">random shapes anywhere</option>
      <option value="custom">from the spec file</option></select></label>
      <label>set <input class="d-set" type="text" style="width:90px"></label></div>`;
  div.querySelector(".d-name").value = d.name;
  div.querySelector(".d-count").value = d.count;
  div.querySelector(".d-prompt").value = d.prompt || "";
  div.querySelector(".d-negative").value = d.negative_prompt || "";
  div.querySelector(".d-region").value = d.region_kind;
  div.querySelector(".d-set").value = d.region_set;
  div.querySelector(".d-region [value=custom]").hidden = d.region_kind !== "custom";
  const picks = (d.picks || []).length;
  if (picks) { const p = document.createElement("div"); p.className = "row"; p.textContent = `${picks} accepted pick(s)`; div.append(p); }
  div.querySelector(".d-remove").addEventListener("click", () => { div.remove(); pushSpec(); });
  for (const el of div.querySelectorAll("input, textarea, select")) el.addEventListener("change", () => pushSpec());
  return div;
}

function renderSets() {
  const sel = $("#region-set"), keep = sel.value;
  const names = new Set(Object.keys(ui.regions));
  for (const d of ui.spec.defects) if (d.region_kind.startsWith("painted")) names.add(d.region_set);
  sel.textContent = "";
  for (const n of [...names].sort()) sel.append(new Option(n, n));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

function pageSpec() {
  const defects = [...document.querySelectorAll(".defect")].map((div) => ({
    name: div.querySelector(".d-name").value.trim(),
    prompt: div.querySelector(".d-prompt").value,
    negative_prompt: div.querySelector(".d-negative").value,
    count: Number(div.querySelector(".d-count").value || 0),
    region_kind: div.querySelector(".d-region").value,
    region_set: div.querySelector(".d-set").value.trim(),
  }));
  const generator = { kind: $("#gen-kind").value };
  if (generator.kind === "diffusion") {
    if ($("#gen-model").value.trim()) generator.model = $("#gen-model").value.trim();
    for (const [key, el] of [["steps", "#gen-steps"], ["guidance_scale", "#gen-guidance"], ["strength", "#gen-strength"]]) {
      if ($(el).value !== "") generator[key] = Number($(el).value);
    }
    generator.adapter = $("#gen-adapter").value.trim() || null;
  }
  return { defects, generator, seed: Number($("#spec-seed").value || 0) };
}

async function pushSpec() {
  $("#gen-diffusion").hidden = $("#gen-kind").value !== "diffusion";
  try {
    const r = await api("POST", "/api/spec", pageSpec());
    $("#spec-yaml").textContent = r.yaml;
    ui.spec = r.spec;
    clearMessage();
    renderSets();
    const sel = $("#preview-defect"), keep = sel.value;
    sel.textContent = "";
    for (const d of r.spec.defects) sel.append(new Option(d.name, d.name));
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    return true;
  } catch (e) { showMessage(e.message); return false; }
}

// --------------------------------------------------------- preview & curation
async function preview() {
  clearMessage();
  if (!ui.image) { showMessage("choose a defect-free image first"); return; }
  if (ui.dirty && !(await saveRegion())) return;
  if (!(await pushSpec())) return;
  const seeds = $("#preview-seeds").value.split(/[\s,]+/).filter(Boolean).map(Number);
  if (seeds.some((s) => !Number.isInteger(s) || s < 0)) { showMessage("seeds must be whole numbers >= 0, separated by commas"); return; }
  const job = await guarded(() => api("POST", "/api/preview", { defect: $("#preview-defect").value, image: ui.image, n: Number($("#preview-n").value || 3), seeds }));
  if (!job) return;
  await runJob(job, "preview", async (cands) => { for (const c of cands) $("#candidates").prepend(candidateCard(c)); });
}

function candidateCard(c) {
  const div = document.createElement("div");
  div.className = "candidate";
  div.dataset.id = c.id;
  div.innerHTML = `<img alt="candidate"><div class="meta"></div>
    <button class="accept primary">accept</button> <button class="reject">reject</button> <a class="mask-link" target="_blank">mask</a>`;
  div.querySelector("img").src = `/files/out/${c.files.overlay}`;
  div.querySelector("img").dataset.plain = `/files/out/${c.files.image}`;
  div.querySelector(".mask-link").href = `/files/out/${c.files.mask}`;
  div.querySelector(".meta").textContent = `${c.defect} · seed ${c.seed} · ${c.image}`;
  const img = div.querySelector("img");
  img.title = "hover: without the mask overlay";
  img.addEventListener("mouseenter", () => { img.src = img.dataset.plain; });
  img.addEventListener("mouseleave", () => { img.src = `/files/out/${c.files.overlay}`; });
  div.querySelector(".accept").addEventListener("click", async () => {
    const job = await guarded(() => api("POST", "/api/accept", { candidate: c.id }));
    if (!job) return;
    await runJob(job, "accept", async (r) => {
      div.classList.add("accepted");
      div.querySelector(".meta").textContent += ` · accepted as ${r.id}`;
      for (const b of div.querySelectorAll("button")) b.disabled = true;
      await refreshState();
    });
  });
  div.querySelector(".reject").addEventListener("click", async () => {
    const r = await guarded(() => api("POST", "/api/reject", { candidate: c.id }));
    if (!r) return;
    div.classList.add("rejected");
    div.querySelector(".meta").textContent += " · rejected";
    for (const b of div.querySelectorAll("button")) b.disabled = true;
  });
  return div;
}

async function refreshState() {
  const s = await guarded(() => api("GET", "/api/state"));
  if (!s) return;
  ui.regions = s.regions;
  renderSpec(s.spec);
  const acc = $("#accepted");
  acc.textContent = "";
  for (const r of s.accepted.slice(-48)) {
    const img = document.createElement("img");
    img.src = `/files/out/${r.image}`; img.title = `${r.id} (seed ${r.seed})`; img.alt = r.id;
    acc.append(img);
  }
  $("#accepted-count").textContent = `(${s.accepted.length})`;
  const y = await guarded(() => api("POST", "/api/spec", pageSpec()));
  if (y) $("#spec-yaml").textContent = y.yaml;
}

async function saveSpec() {
  if (!(await pushSpec())) return;
  const r = await guarded(() => api("POST", "/api/save", {}));
  if (r) { showMessage(`spec saved to ${r.path}: diag generate ${r.path} --out FOLDER reproduces it`, "info"); $("#spec-yaml").textContent = r.yaml; }
}

async function loadSpecFile(file) {
  if (!file) return;
  const text = await file.text();
  const r = await guarded(() => api("POST", "/api/load", { yaml: text }));
  if (r) { renderSpec(r.spec); await pushSpec(); loadThumbs(); showMessage(`loaded ${file.name}`, "info"); }
  $("#load-spec").value = "";
}

async function runBatch() {
  clearMessage();
  if (!(await pushSpec())) return;
  const job = await guarded(() => api("POST", "/api/run", {}));
  if (!job) return;
  await runJob(job, "batch", async (r) => {
    const box = $("#batch");
    box.textContent = `${r.generated} generated, ${r.skipped} already done, of ${r.planned}`;
    const img = document.createElement("img");
    img.src = `/files/out/${r.sheet}?t=${Date.now()}`; img.alt = "contact sheet";
    box.append(img);
    await refreshState();
  });
}

// ----------------------------------------------------------------- wiring
function wire() {
  for (const t of document.querySelectorAll(".tab")) {
    t.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".tab")) o.classList.toggle("active", o === t);
      ui.which = t.dataset.which; ui.offset = 0; loadThumbs();
    });
  }
  $("#filter").addEventListener("input", () => { ui.filter = $("#filter").value; ui.offset = 0; loadThumbs(); });
  $("#prev").addEventListener("click", () => { ui.offset = Math.max(0, ui.offset - ui.per); loadThumbs(); });
  $("#next").addEventListener("click", () => { ui.offset += ui.per; loadThumbs(); });
  for (const b of document.querySelectorAll(".tool")) {
    b.addEventListener("click", () => {
      ui.tool = b.dataset.tool;
      for (const o of document.querySelectorAll(".tool")) o.classList.toggle("active", o === b);
    });
  }
  $("#brush-size").addEventListener("input", () => { $("#brush-size-value").textContent = $("#brush-size").value; });
  const mc = maskCanvas();
  mc.addEventListener("pointerdown", onDown);
  mc.addEventListener("pointermove", onMove);
  mc.addEventListener("pointerup", onUp);
  mc.addEventListener("pointercancel", onUp);
  $("#zoom-in").addEventListener("click", () => { ui.zoom = Math.min(16, ui.zoom * 1.25); applyZoom(); });
  $("#zoom-out").addEventListener("click", () => { ui.zoom = Math.max(0.05, ui.zoom / 1.25); applyZoom(); });
  $("#zoom-fit").addEventListener("click", fitZoom);
  $("#region-set").addEventListener("change", () => { loadRegion(); loadThumbs(); });
  for (const r of document.querySelectorAll("[name=scope]")) r.addEventListener("change", loadRegion);
  $("#clear-region").addEventListener("click", () => { const c = maskCanvas(); c.getContext("2d").clearRect(0, 0, c.width, c.height); ui.dirty = true; });
  $("#save-region").addEventListener("click", saveRegion);
  $("#from-mask").addEventListener("click", async () => {
    if (!ui.positiveMask) { showMessage("choose a real defect under \"Real defects\" first"); return; }
    const target = ui.image || ui.lastImage;
    if (!target) { showMessage("choose a defect-free image to paint on first"); return; }
    if (!ui.image) await openImage(target);
    drawMaskImage(ui.positiveMask); ui.dirty = true;
    status(`mask of ${ui.positive} placed: edit it, then save region`);
  });
  $("#add-defect").addEventListener("click", () => {
    const n = document.querySelectorAll(".defect").length + 1;
    $("#defects").append(defectCard({ name: `defect${n}`, prompt: "", negative_prompt: "", count: 10, region_kind: "painted", region_set: `defect${n}` }, n - 1));
    pushSpec();
  });
  for (const id of ["#gen-kind", "#gen-model", "#gen-steps", "#gen-guidance", "#gen-strength", "#gen-adapter", "#spec-seed"]) $(id).addEventListener("change", () => pushSpec());
  $("#preview").addEventListener("click", preview);
  $("#save-spec").addEventListener("click", saveSpec);
  $("#load-spec").addEventListener("change", (e) => loadSpecFile(e.target.files[0]));
  $("#run-batch").addEventListener("click", runBatch);
  $("#message-close").addEventListener("click", clearMessage);
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, textarea, select")) return;
    const key = { b: "#tool-brush", e: "#tool-eraser", r: "#tool-rect" }[e.key];
    if (key) $(key).click();
  });
}

async function start() {
  wire();
  const s = await guarded(() => api("GET", "/api/state"));
  if (!s) return;
  $("#paths").textContent = `data ${s.data} · out ${s.out}`;
  const kind = $("#gen-kind");
  for (const k of s.generators) kind.append(new Option(k, k));
  ui.regions = s.regions;
  renderSpec(s.spec);
  await refreshState();
  await loadThumbs();
  status("ready");
  document.body.dataset.ready = "1";
}
document.addEventListener("DOMContentLoaded", start);
