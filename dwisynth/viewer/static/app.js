// dwisynth viewer: four linked NiiVue views (same slice, crosshair and DWI window), jobs polled until done.
"use strict";

const $ = (id) => document.getElementById(id);
const ORGANS = ["brain", "breast", "abdomen", "neck", "pelvis"];
const WINDOWS = {  // presets: which panels they set, and how
  "DWI: auto": {dwi: "robust"},
  "DWI: full range": {dwi: "full"},
  "DWI: high contrast": {dwi: "narrow"},
  "ADC 0–3": {adc: [0, 3]},
  "ADC 0–1.5 (restricted)": {adc: [0, 1.5]},
  "CT brain 0–80 HU": {ct: [0, 80]},
  "CT soft tissue −160–240 HU": {ct: [-160, 240]},
};

// diverging: synthetic below acquired in blue, above in orange, equal in black (NiiVue's own maps start at a colour)
const DIFFERENCE_COLORMAP = {R: [0, 0, 0, 255, 255], G: [200, 60, 0, 60, 200], B: [255, 255, 0, 0, 0],
                             A: [255, 255, 255, 255, 255], I: [0, 64, 128, 192, 255]};

const viewer = {
  state: null, study: null, synthesis: null, models: {}, views: [], roles: [null, null, null, null],
  voxel: null, busy: false, lastVoxel: null,
};
window.viewer = viewer;  // what the browser tests read

async function api(method, url, body) {
  const options = {method, headers: {}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await readAnswer(response);
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// The server's JSON, or its plain-text refusal (a missing token, e.g. after a restart) as the error to show.
async function readAnswer(response) {
  const text = await response.text();
  try { return JSON.parse(text); } catch { return {error: text.trim() || `${response.status} ${response.statusText}`}; }
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

// A job (open or synthesize): poll until it is done, showing its place in the queue and its stage.
async function runJob(job) {
  const started = performance.now();
  while (true) {
    if (job.state === "queued") setStatus("queued", `queued (${job.position ?? 0} ahead): ${job.what}`);
    if (job.state === "running") setStatus("running", `${job.stage} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
    if (job.state === "done") { setStatus("done", `${job.what} done in ${job.seconds} s`); return job.result; }
    if (job.state === "failed") { setStatus("failed", `${job.what} failed`); throw new Error(job.error); }
    await new Promise((resolve) => setTimeout(resolve, 150));
    const response = await fetch(`/api/jobs/${job.id}`);
    job = await readAnswer(response);
    if (!job.state) throw new Error(job.error);
  }
}

async function guarded(what) {
  showError("");
  viewer.busy = true;
  try { return await what(); } catch (err) { showError(err.message); setStatus("failed", "failed"); }
  finally { viewer.busy = false; }
}

// ---- views ---------------------------------------------------------------------------------------
async function createViews() {
  for (let n = 0; n < 4; n++) {
    const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false,
                                  crosshairColor: [1, 0.2, 0.2, 1], crosshairWidth: 1});
    await nv.attachToCanvas($(`view-${n}`));
    nv.addColormap("difference", DIFFERENCE_COLORMAP);
    nv.setSliceType(nv.sliceTypeAxial);
    nv.onLocationChange = (data) => locationChanged(data.vox);
    nv.onIntensityChange = (volume) => linkWindow(n, volume);
    viewer.views.push(nv);
  }
  for (const nv of viewer.views) nv.broadcastTo(viewer.views.filter((other) => other !== nv), {"2d": true, "3d": true});
}

function volumeUrl(name) { return `/api/studies/${viewer.study.id}/volumes/${name}.nii`; }

async function show(n, role, name, title, options = {}) {
  const nv = viewer.views[n];
  viewer.roles[n] = name ? role : null;
  $(`title-${n}`).textContent = title;
  if (!name) { await nv.loadVolumes([]); nv.drawScene(); return; }
  await nv.loadVolumes([{url: volumeUrl(name), name: `${name}.nii`, colormap: "gray", ...options}]);
  nv.setSliceType(nv.sliceTypeAxial);
}

// Synthetic and acquired DWI share one window: a contrast drag on either sets both.
function linkWindow(n, volume) {
  if (viewer.roles[n] !== "dwi") return;
  viewer.views.forEach((nv, m) => {
    if (m !== n && viewer.roles[m] === "dwi" && nv.volumes.length) {
      nv.volumes[0].cal_min = volume.cal_min; nv.volumes[0].cal_max = volume.cal_max; nv.updateGLVolume();
    }
  });
}

function applyWindow(preset) {
  const spec = WINDOWS[preset];
  viewer.views.forEach((nv, n) => {
    const role = viewer.roles[n];
    if (!role || !nv.volumes.length || !(role in spec)) return;
    const volume = nv.volumes[0];
    let range = spec[role];
    if (role === "dwi") {
      const reference = viewer.views[0].volumes[0] || volume;  // the synthetic sets the DWI window
      const top = range === "full" ? reference.global_max : range === "narrow" ? reference.robust_max * 0.5 : reference.robust_max;
      range = [range === "full" ? Math.min(0, reference.global_min) : 0, top];
    }
    volume.cal_min = range[0]; volume.cal_max = range[1];
    nv.updateGLVolume();
  });
}

function goToVoxel(i, j, k) {  // for the keyboard-less (and the tests): put every crosshair on one voxel
  for (const nv of viewer.views) {
    if (!nv.volumes.length) continue;
    nv.scene.crosshairPos = nv.vox2frac([i, j, k]);
    nv.drawScene();
  }
  return locationChanged([i, j, k]);
}
viewer.goToVoxel = goToVoxel;

// ---- voxel values and the signal-vs-b curve -------------------------------------------------------
let voxelRequest = 0;
async function locationChanged(vox) {
  if (!viewer.study || !vox) return;
  const [i, j, k] = vox.map((v) => Math.round(v));
  viewer.voxel = [i, j, k];
  const ticket = ++voxelRequest;
  const query = `i=${i}&j=${j}&k=${k}` + (viewer.synthesis ? `&synthesis=${viewer.synthesis.id}` : "");
  try {
    const info = await api("GET", `/api/studies/${viewer.study.id}/voxel?${query}`);
    if (ticket !== voxelRequest) return;  // a newer click has answered or will
    viewer.lastVoxel = info;
    renderVoxel(info);
  } catch (err) { showError(err.message); }
}

const LABELS = {synthetic: "synthetic", acquired: "acquired", difference: "difference", adc: "ADC (synthetic)", ct: "CT (HU)"};
function renderVoxel(info) {
  $("voxel").textContent = `(${info.voxel.join(", ")})` + (info.in_mask === false ? " outside the mask" : "");
  const rows = Object.entries(info.values).map(([name, value]) =>
    `<tr><td>${LABELS[name] || name}</td><td id="value-${name}">${value.toPrecision(6)}</td></tr>`);
  if (info.fit) rows.push(`<tr><td>ADC (fit of acquired points)</td><td id="value-fit-adc">${info.fit.adc.toPrecision(4)}</td></tr>`);
  $("values").tBodies[0].innerHTML = rows.join("");
  drawCurve(info);
}

function drawCurve(info) {
  const canvas = $("curve"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const acquired = info.acquired || [], synthetic = info.synthetic_curve || [];
  const all = acquired.concat(synthetic);
  if (!all.length) return;
  const pad = {l: 44, r: 10, t: 10, b: 30};
  const bMax = Math.max(...all.map((p) => p[0]), 1), sMax = Math.max(...all.map((p) => p[1]), 1e-6) * 1.1;
  const x = (b) => pad.l + (canvas.width - pad.l - pad.r) * b / bMax;
  const y = (s) => canvas.height - pad.b - (canvas.height - pad.t - pad.b) * Math.max(s, 0) / sMax;
  g.strokeStyle = "#666"; g.fillStyle = "#aaa"; g.font = "11px sans-serif";
  g.beginPath(); g.moveTo(pad.l, pad.t); g.lineTo(pad.l, y(0)); g.lineTo(x(bMax), y(0)); g.stroke();
  g.fillText("b (s/mm²)", canvas.width / 2 - 20, canvas.height - 6);
  g.fillText("0", pad.l - 10, y(0) + 12); g.fillText(bMax.toFixed(0), x(bMax) - 24, y(0) + 12);
  g.fillText(sMax.toPrecision(2), 2, pad.t + 8); g.fillText("S/S0", 2, pad.t + 22);
  if (info.fit) {
    g.setLineDash([4, 3]); g.strokeStyle = "#aaa"; g.beginPath();
    for (let n = 0; n <= 50; n++) {
      const b = bMax * n / 50, s = info.fit.s0 * Math.exp(-b * info.fit.adc / 1000);
      n ? g.lineTo(x(b), y(s)) : g.moveTo(x(b), y(s));
    }
    g.stroke(); g.setLineDash([]);
  }
  if (synthetic.length) {
    g.strokeStyle = "#fc6"; g.lineWidth = 2; g.beginPath();
    synthetic.forEach(([b, s], n) => n ? g.lineTo(x(b), y(s)) : g.moveTo(x(b), y(s)));
    g.stroke(); g.lineWidth = 1;
  }
  g.fillStyle = "#6cf";
  for (const [b, s] of acquired) { g.beginPath(); g.arc(x(b), y(s), 3.5, 0, 2 * Math.PI); g.fill(); }
  if (viewer.synthesis && info.values.synthetic !== undefined) {
    g.fillStyle = "#fc6"; g.fillRect(x(viewer.synthesis.b) - 4, y(info.values.synthetic) - 4, 8, 8);
  }
}

// ---- study, model, b ----------------------------------------------------------------------------
async function studyOpened(study) {
  viewer.study = study; viewer.synthesis = null;
  $("study-label").textContent = `${study.label}` + (study.organ ? `, ${study.organ}` : "") +
    (study.acquired_b.length ? `, acquired b = ${study.acquired_b.join(", ")}` : "");
  const models = study.models.map((id) => viewer.models[id]);
  $("model").innerHTML = models.map((m) =>
    `<option value="${m.id}">${m.id} (${m.b_range ? `any b in ${m.b_range.join("–")}` : `b ${m.trained_b.join(", ")}`})</option>`).join("");
  const preferred = models.find((m) => m.method === "minegan") || models.find((m) => m.b_range) || models[0];
  if (preferred) $("model").value = preferred.id;
  $("model").disabled = $("synthesize").disabled = $("b").disabled = !models.length;
  if (!models.length) showError(`no model under the models folder fits ${study.label}`);
  modelChanged();
  for (const id of ["export-nifti", "export-dicom"]) $(id).classList.add("disabled");
  $("roi").disabled = true;
  await show(0, null, null, "synthetic (pick a b-value)");
  await show(1, study.has_dwi ? "dwi" : "ct", study.has_dwi ? "b0" : "ct",
             study.has_dwi ? `acquired b = ${study.acquired_b[0]}` : "CT (HU)",
             study.has_dwi ? {} : {cal_min: 0, cal_max: 80});
  await show(2, null, null, "difference (synthetic − acquired)");
  await show(3, study.has_ct && study.has_dwi ? "ct" : null, study.has_ct && study.has_dwi ? "ct" : null,
             study.has_ct && study.has_dwi ? "CT (HU)" : "ADC of the synthesis", {cal_min: 0, cal_max: 80});
}

function modelChanged() {
  const model = viewer.models[$("model").value];
  if (!model) return;
  const slider = $("b"), ticks = model.trained_b;
  const [lo, hi] = model.b_range || [Math.min(...ticks), Math.max(...ticks)];
  slider.min = lo; slider.max = hi; slider.step = model.b_range ? 5 : 1;
  $("b-ticks").innerHTML = ticks.map((b) => `<option value="${b}" label="${b}"></option>`).join("");
  if (+slider.value < lo || +slider.value > hi) slider.value = hi;
  snapToModel();
}

function snapToModel() {  // a model with fixed targets synthesizes those only: the slider snaps to them
  const model = viewer.models[$("model").value], slider = $("b");
  if (model && !model.b_range) {
    const b = +slider.value;
    slider.value = model.trained_b.reduce((best, t) => Math.abs(t - b) < Math.abs(best - b) ? t : best);
  }
  $("b-value").textContent = slider.value;
}

async function synthesize() {
  const model = viewer.models[$("model").value], b = +$("b").value;
  const job = await api("POST", "/api/synthesize", {study: viewer.study.id, model: model.id, b});
  const result = await runJob(job);
  viewer.synthesis = result;
  const v = result.volumes, ct2dwi = model.task === "ct2dwi";
  await show(0, "dwi", v.synthetic, `synthetic b = ${result.b} (${model.id})`);
  await show(1, "dwi", v.acquired, v.acquired ? `acquired b = ${result.b}` : `b = ${result.b} was not acquired`);
  const top = viewer.views[0].volumes[0].robust_max || 1;
  await show(2, "difference", v.difference, "difference (synthetic − acquired)",
             {colormap: "difference", cal_min: -0.6 * top, cal_max: 0.6 * top});
  if (ct2dwi) await show(3, "ct", "ct", "CT (HU)", {cal_min: 0, cal_max: 80});
  else await show(3, "adc", v.adc, "ADC of the synthesis (×10⁻³ mm²/s)", {cal_min: 0, cal_max: 3});
  applyWindow("DWI: auto");
  for (const [id, fmt] of [["export-nifti", "nifti"], ["export-dicom", "dicom"]]) {
    $(id).href = `/api/studies/${viewer.study.id}/export?synthesis=${result.id}&format=${fmt}`;
    $(id).classList.remove("disabled");
  }
  $("roi").disabled = ct2dwi;
  const [i, j, k] = viewer.voxel || viewer.views[0].frac2vox(viewer.views[0].scene.crosshairPos);
  await goToVoxel(i, j, k);
  return result;
}
viewer.synthesize = () => guarded(synthesize);

async function measureRoi() {
  const [i, j, k] = viewer.voxel;
  const r = await api("GET", `/api/studies/${viewer.study.id}/roi?synthesis=${viewer.synthesis.id}` +
                              `&i=${i}&j=${j}&k=${k}&radius=${$("roi-radius").value}`);
  const fmt = (m) => `${m.mean.toFixed(3)} ± ${m.sd.toFixed(3)}`;
  $("roi-result").textContent = `${r.voxels} voxels: synthetic ${fmt(r.synthetic)}` +
    (r.acquired ? `, acquired ${fmt(r.acquired)}` : "") + " ×10⁻³ mm²/s";
}

// ---- wiring ---------------------------------------------------------------------------------------
async function start() {
  await createViews();
  $("organ").innerHTML += ORGANS.map((o) => `<option>${o}</option>`).join("");
  $("window").innerHTML = Object.keys(WINDOWS).map((w) => `<option>${w}</option>`).join("");
  const state = await api("GET", "/api/state");
  viewer.state = state;
  for (const m of state.models) viewer.models[m.id] = m;
  $("subject").innerHTML = state.subjects.map((s) =>
    `<option value="${s.cohort}/${s.subject}">${s.cohort}/sub-${s.subject}` +
    `${s.organ ? ` (${s.organ}${s.ct ? ", CT" : ""}${s.split ? `, ${s.split}` : ""})` : ""}</option>`).join("");
  $("open-results").onsubmit = (e) => { e.preventDefault(); guarded(async () => {
    const [cohort, subject] = $("subject").value.split("/");
    await studyOpened(await runJob(await api("POST", "/api/open", {source: "results", cohort, subject})));
  }); };
  $("open-path").onsubmit = (e) => { e.preventDefault(); guarded(async () => {
    await studyOpened(await runJob(await api("POST", "/api/open", {source: "path", path: $("path").value,
                                                                     organ: $("organ").value})));
  }); };
  $("upload").onchange = () => guarded(async () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (file.size > state.max_upload_mb * 2 ** 20) throw new Error(`${file.name}: ${(file.size / 2 ** 20).toFixed(0)} MiB, more than the ${state.max_upload_mb} MiB the viewer accepts`);
    setStatus("running", `uploading ${file.name}`);
    const response = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}&organ=${$("organ").value}`,
                                 {method: "POST", body: file,
                                  headers: {"Content-Type": "application/octet-stream"}});  // the only type it takes
    const job = await readAnswer(response);
    if (!response.ok) throw new Error(job.error);
    await studyOpened(await runJob(job));
  });
  $("model").onchange = modelChanged;
  $("b").oninput = () => { $("b-value").textContent = $("b").value; };
  $("b").onchange = () => { snapToModel(); viewer.synthesize(); };
  $("synthesize").onclick = () => viewer.synthesize();
  $("window").onchange = () => applyWindow($("window").value);
  $("roi").onclick = () => guarded(measureRoi);
  viewer.ready = true;
  if (state.startup_job) await guarded(async () => studyOpened(await runJob(state.startup_job)));
}

start().catch((err) => showError(`the viewer did not start: ${err.message}`));
