// lorafuse serve's page: the form is made from /api/keys (the key declarations), validated on
// each change, and the run's events arrive as server-sent events from /api/events.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
let keys = [];
let source = null;
const curve = { steps: [], loss: [], lr: [] };

// A URL of this server, with the token when the server needs one.
function u(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function getJSON(path) {
  const r = await fetch(u(path));
  return [r.status, await r.json().catch(() => ({}))];
}

async function post(path, body) {
  const r = await fetch(u(path), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return [r.status, await r.json().catch(() => ({}))];
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const field = (name) => $("field-" + name);

// The form's values as `key=value` settings (empty fields keep their defaults).
function sets() {
  return keys
    .map((k) => [k.name, field(k.name).value.trim()])
    .filter(([, v]) => v !== "")
    .map(([n, v]) => n + "=" + v);
}

function buildForm() {
  const body = $("form").tBodies[0];
  for (const k of keys) {
    const row = el("tr", { id: "row-" + k.name });
    const th = el("th");
    th.append(el("label", { for: "field-" + k.name }, k.name));
    th.append(el("div", { class: "type" }, k.doc_type + " · default " + k.default_doc));
    const td = el("td");
    let input;
    if (k.doc_type === "true/false") {
      input = el("select", { id: "field-" + k.name });
      for (const v of ["", "true", "false"]) input.append(el("option", { value: v }, v || "(default)"));
    } else {
      input = el("input", { id: "field-" + k.name, placeholder: k.default_doc.replace(/`/g, "") });
    }
    input.addEventListener("change", validate);
    td.append(input);
    td.append(el("div", { class: "error", id: "error-" + k.name }));
    td.append(el("div", { class: "doc" }, k.doc));
    row.append(th, td);
    body.append(row);
  }
}

// Problems next to their fields; those without a field above the form.
function showProblems(problems, notices) {
  for (const k of keys) {
    $("error-" + k.name).textContent = "";
    $("row-" + k.name).classList.remove("bad");
  }
  $("general").textContent = "";
  for (const p of problems) {
    if (p.key && field(p.key)) {
      $("error-" + p.key).textContent += p.message + " ";
      $("row-" + p.key).classList.add("bad");
    } else {
      $("general").append(el("div", {}, p.message));
    }
  }
  $("notices").textContent = "";
  for (const n of notices || []) $("notices").append(el("div", {}, n));
}

let validating = 0;
async function validate() {
  const mine = ++validating;
  const [, r] = await post("/api/validate", { sets: sets() });
  if (mine === validating) showProblems(r.problems || [], r.notices);
}

function log(text) {
  const l = $("log");
  l.textContent += text + "\n";
  l.scrollTop = l.scrollHeight;
}

function draw() {
  const c = $("curve");
  const g = c.getContext("2d");
  const W = c.width, H = c.height, pad = 64, bottom = 28;
  g.clearRect(0, 0, W, H);
  g.font = "11px sans-serif";
  g.strokeStyle = "#999";
  g.strokeRect(pad, 8, W - 2 * pad, H - bottom - 8);
  c.dataset.points = String(curve.loss.length);
  if (curve.steps.length === 0) return;
  const x0 = curve.steps[0], x1 = Math.max(curve.steps[curve.steps.length - 1], x0 + 1);
  const X = (s) => pad + ((s - x0) / (x1 - x0)) * (W - 2 * pad);
  const line = (ys, color, label, side) => {
    const fin = ys.filter(Number.isFinite);
    if (fin.length === 0) return;
    const lo = Math.min(...fin), hi = Math.max(...fin, lo + 1e-12);
    const Y = (v) => 8 + (1 - (v - lo) / (hi - lo)) * (H - bottom - 16);
    g.strokeStyle = color;
    g.beginPath();
    ys.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      if (i === 0) g.moveTo(X(curve.steps[i]), Y(v));
      else g.lineTo(X(curve.steps[i]), Y(v));
    });
    g.stroke();
    g.fillStyle = color;
    g.textAlign = side === "left" ? "left" : "right";
    const x = side === "left" ? 2 : W - 2;
    g.fillText(hi.toPrecision(3), x, 16);
    g.fillText(lo.toPrecision(3), x, H - bottom);
    g.fillText(label, x, H / 2 - 20);
  };
  line(curve.loss, "#1f5fbf", "loss", "left");
  line(curve.lr, "#d9730d", "learning rate", "right");
  g.fillStyle = "#444";
  g.textAlign = "center";
  g.fillText("step " + x0 + " – " + curve.steps[curve.steps.length - 1], W / 2, H - 8);
}

function running(on) {
  $("start").disabled = on;
  $("resume").disabled = on;
  $("stop").disabled = !on;
}

function onEvent(e) {
  switch (e.event) {
    case "started":
      $("status").textContent = "running: " + e.images + " images, " + e.total_steps + " steps";
      running(true);
      break;
    case "step":
      curve.steps.push(e.step);
      curve.loss.push(e.loss);
      curve.lr.push(e.lr);
      $("last-step").textContent =
        "step " + e.step + "/" + e.total + "  loss " + Number(e.loss).toFixed(4) + "  lr " + Number(e.lr).toExponential(2);
      draw();
      break;
    case "saved":
      log("saved " + e.what + ": " + e.path);
      if (e.what === "sample") {
        const fig = el("figure");
        fig.append(el("img", { src: u(e.url), alt: "sample" }));
        fig.append(el("figcaption", {}, e.path.split(/[\\/]/).pop()));
        $("samples").prepend(fig);
      }
      break;
    case "validation":
      log("validation loss at step " + e.step + ": " + e.loss + (e.best ? " (best)" : ""));
      break;
    case "info":
    case "warning":
      log(e.message);
      break;
    case "finished":
      $("status").textContent = e.interrupted
        ? "stopped after step " + e.steps + " (state saved: Resume continues)"
        : "finished: " + e.steps + " steps, LoRA at " + e.lora_path;
      running(false);
      source.close();
      break;
    case "failed":
      $("status").textContent = "failed";
      $("run-problems").textContent = e.message;
      running(false);
      source.close();
      break;
  }
}

function listen() {
  if (source) source.close();
  source = new EventSource(u("/api/events?from=0"));
  source.onmessage = (m) => onEvent(JSON.parse(m.data));
}

async function start(resume) {
  $("run-problems").textContent = "";
  const [status, r] = await post(resume ? "/api/resume" : "/api/start", { sets: sets() });
  if (status === 200) {
    if (!resume) {
      curve.steps.length = curve.loss.length = curve.lr.length = 0;
      $("samples").textContent = "";
      draw();
    }
    $("status").textContent = "starting";
    running(true);
    listen();
  } else if (r.problems) {
    showProblems(r.problems, []);
    $("run-problems").textContent = "The configuration has problems (shown at their keys).";
  } else {
    $("run-problems").textContent = r.error || "the server answered " + status;
  }
}

async function stop() {
  const [status, r] = await post("/api/stop", {});
  $("status").textContent = status === 200 ? "stopping after this step" : r.error;
}

async function plan() {
  const [status, r] = await post("/api/plan", { sets: sets(), gpu: $("gpu").value });
  $("plan-out").textContent = status === 200
    ? r.card + "\n" + (r.fits ? "fits" : "does NOT fit") + "\n\n" + r.table
    : r.error;
}

async function load() {
  const path = $("load-path").value.trim();
  const [status, r] = await getJSON("/api/load?path=" + encodeURIComponent(path));
  if (status !== 200) {
    $("general").textContent = r.error || "cannot load " + path;
    return;
  }
  for (const k of keys) field(k.name).value = "";
  for (const [k, v] of Object.entries(r.values)) if (field(k)) field(k).value = v;
  validate();
}

async function captions() {
  const dir = field("train_data_dir").value.trim();
  const [status, r] = await getJSON("/api/captions?dir=" + encodeURIComponent(dir));
  $("tags").textContent = "";
  const body = $("caption-list").tBodies[0];
  body.textContent = "";
  if (status !== 200) {
    $("tags").textContent = r.error || "cannot read " + dir;
    return;
  }
  $("tags").textContent = r.tags.map(([t, n]) => t + " (" + n + ")").join(", ");
  for (const f of r.files) {
    const row = el("tr");
    row.append(el("td", {}, f.file), el("td", {}, f.text));
    body.append(row);
  }
  for (const f of r.uncaptioned) {
    const row = el("tr", { class: "bad" });
    row.append(el("td", {}, f), el("td", {}, "(no caption)"));
    body.append(row);
  }
}

// The tag edit of `lorafuse tags` on train_data_dir's captions: previewed, or written.
async function editTags(write) {
  const words = (id) => $(id).value.split(",").map((t) => t.trim()).filter((t) => t);
  const replace = $("tag-replace").value.split(";").map((r) => r.split("=")).filter((r) => r.length === 2 && r[0].trim());
  const [status, r] = await post("/api/tags", {
    dir: field("train_data_dir").value.trim(),
    ext: field("caption_extension").value.trim(),
    trigger: $("tag-trigger").value,
    remove: words("tag-remove"),
    replace,
    dedupe: $("tag-dedupe").checked,
    dry_run: !write,
  });
  const out = $("tag-result");
  out.textContent = "";
  if (status !== 200) {
    out.textContent = r.error || "the server answered " + status;
    return;
  }
  out.append(el("div", {}, r.changes.length + " captions " + (r.written ? "changed" : "would change")));
  for (const c of r.changes.slice(0, 50)) {
    out.append(el("div", { class: "change" }, c.file + ": " + c.before.trim() + "  →  " + c.after.trim()));
  }
  if (r.written) captions();
}

async function main() {
  [, keys] = await getJSON("/api/keys");
  buildForm();
  const [, cards] = await getJSON("/api/profiles");
  for (const c of cards) {
    const label = c.name + " (" + Math.round(c.memory / 2 ** 30) + " GiB)" + (c.unsupported ? " – unsupported" : "");
    $("gpu").append(el("option", { value: c.name }, label));
  }
  const usable = cards.find((c) => c.usual && !c.unsupported) || cards.find((c) => !c.unsupported);
  if (usable) $("gpu").value = usable.name;
  $("start").addEventListener("click", () => start(false));
  $("resume").addEventListener("click", () => start(true));
  $("stop").addEventListener("click", stop);
  $("plan").addEventListener("click", plan);
  $("load").addEventListener("click", load);
  $("captions").addEventListener("click", captions);
  $("tag-preview").addEventListener("click", () => editTags(false));
  $("tag-apply").addEventListener("click", () => editTags(true));
  $("filter").addEventListener("input", () => {
    const f = $("filter").value.trim().toLowerCase();
    for (const k of keys) $("row-" + k.name).hidden = f !== "" && !k.name.includes(f);
  });
  draw();
  const [, s] = await getJSON("/api/status");
  if (s.job) {
    running(s.running);
    listen();
  } else {
    running(false);
  }
  document.body.dataset.ready = "1";
}

main();
