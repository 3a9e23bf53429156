// galley's kitchen: one-click builds, live logs, results, history and kill, on galley's HTTP API.
// Plain JavaScript, no dependency. One event stream per page (browsers allow few connections per
// origin), read with fetch so the token goes in a header and Last-Event-ID resumes it.
"use strict";

const STAGES = ["compile", "verify", "strip", "compress", "layer", "assemble", "attest", "push"];
const SYMBOL = { succeeded: "✓", failed: "✗", running: "⟳", queued: "…", skipped: "–", cancelled: "⊘", pending: "○", interrupted: "✗" };
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- API -------------------------------------------------------------------------------------

const TOKEN_KEY = "galley-token";
let tokenPrompt = null;

function headers(extra = {}) {
  const h = { ...extra };
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** Asks for the token once (concurrent callers share the dialog). */
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("token-dialog");
  const err = $("token-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("token-input").value = "";
  tokenPrompt = new Promise((resolve) => {
    $("token-form").onsubmit = () => {
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      $("token-button").hidden = false;
      tokenPrompt = null;
      resolve();
    };
  });
  dialog.showModal();
  $("token-input").focus();
  return tokenPrompt;
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
    this.hint = e.hint;
  }
}

/** Calls the API; a 401 asks for the token and tries again. */
async function api(method, path, body) {
  for (;;) {
    // Every POST says JSON, with a body or not: the service refuses any other (a cross-site
    // form cannot send it without a preflight).
    const init = { method, headers: headers(body || method === "POST" ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: { message: `the service cannot be reached (${e.message})`, hint: "check that galley serve runs" } });
    }
    if (resp.status === 401) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      await askToken(had ? "That token was refused. Enter a valid one." : "");
      continue;
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }
}

// ---- messages ----------------------------------------------------------------------------------

function announce(text) {
  const a = $("announcer");
  a.textContent = "";
  setTimeout(() => { a.textContent = text; }, 30);
}

function showAlert(err) {
  const box = $("alert");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err.hint ? `${err.message}. ${err.hint}` : err.message;
  box.hidden = false;
}

function fieldErrors(err) {
  for (const e of document.querySelectorAll(".error[id^=err-]")) { e.hidden = true; e.textContent = ""; }
  for (const i of document.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  if (!err) return false;
  const root = err.field ? err.field.replace(/\[.*$/, "").split(".")[0] : null;
  const slot = root && $(`err-${root}`);
  if (!slot) return false;
  slot.textContent = err.hint ? `${err.message}. ${err.hint}` : err.message;
  slot.hidden = false;
  const input = $(root) || document.querySelector(`#${root} input`);
  if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  return true;
}

// ---- formatting --------------------------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}
const secs = (ms) => (ms === null || ms === undefined ? "" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);
const badge = (status) => el("span", { class: `badge s-${status}`, text: `${SYMBOL[status] || ""} ${status}` });
const arch = (target) => (target || "").split("-")[0];

// ---- routing -----------------------------------------------------------------------------------

let stream = null; // the one event stream of the page

function route() {
  const hash = location.hash || "#/new";
  for (const v of ["new", "build", "history"]) $(`view-${v}`).hidden = true;
  for (const a of document.querySelectorAll(".top nav a")) a.removeAttribute("aria-current");
  if (stream && !hash.startsWith(`#/builds/${stream.id}`)) { stream.abort(); stream = null; }
  showAlert(null);
  const m = hash.match(/^#\/builds\/(\d+)$/);
  if (m) {
    $("view-build").hidden = false;
    openBuild(Number(m[1]));
  } else if (hash.startsWith("#/history")) {
    $("view-history").hidden = false;
    $("nav-history").setAttribute("aria-current", "page");
    loadHistory(true);
  } else {
    $("view-new").hidden = false;
    $("nav-new").setAttribute("aria-current", "page");
    loadForm();
  }
}

// ---- the build form ----------------------------------------------------------------------------

let projects = [];
let bumps = {};
// Whether the version was typed (or picked) since the project was chosen: a suggestion that
// arrives later must not overwrite it.
let versionEdited = false;

async function loadForm() {
  try {
    projects = await api("GET", "/api/v1/projects");
  } catch (e) { showAlert(e); return; }
  const sel = $("project");
  const keep = sel.value;
  sel.replaceChildren(...projects.map((p) => el("option", { value: p.name, text: p.name })));
  if (keep && projects.some((p) => p.name === keep)) sel.value = keep;
  $("project-field").hidden = projects.length < 2;
  await projectChanged();
}

async function projectChanged() {
  fieldErrors(null);
  const p = projects.find((x) => x.name === $("project").value);
  if (!p) return;
  versionEdited = false;
  $("project-help").textContent = `${p.kind === "git" ? "git repository" : "directory"} ${p.source}`;
  if (p.error) showAlert({ message: `project ${p.name}: ${p.error}` });
  $("variants").replaceChildren(...p.variants.map((v) => {
    const id = `variant-${v.name}`;
    return el("label", { class: "inline", for: id },
      el("input", { type: "checkbox", id, name: "variants", value: v.name, checked: true }),
      `${v.name} `, el("span", { class: "help", text: `(${v.features.join(", ")})` }));
  }));
  $("ref-field").hidden = p.kind !== "git";
  const push = $("push");
  push.disabled = !p.push;
  push.checked = false;
  $("push-help").textContent = p.push ? `to ${p.push}` : "this project has no push repository configured";
  $("check-button").hidden = !p.push;
  $("check-result").textContent = "";
  try {
    const next = await api("GET", `/api/v1/versions/next?project=${encodeURIComponent(p.name)}`);
    // Another project was chosen meanwhile: its own answer is on its way.
    if ($("project").value !== p.name) return;
    bumps = next;
    if (!versionEdited) $("version").value = next.next;
    for (const b of document.querySelectorAll("[data-bump]")) {
      const k = b.dataset.bump;
      // The visible text is the accessible name (WCAG 2.5.3: no label that hides it).
      b.textContent = `${k} ${next[k]}`;
      b.removeAttribute("aria-label");
    }
    const why = next.decided_by.length ? `; ${next.suggested} suggested by “${next.decided_by[0].subject}”` : "";
    $("version-help").textContent = next.source === "cargo"
      ? `nothing published yet: ${next.current} from Cargo.toml${why}`
      : `latest ${next.current}, from ${next.from}${why}`;
    if (next.warning) $("version-help").textContent += ` (${next.warning})`;
  } catch (e) { $("version-help").textContent = `no suggestion: ${e.message}`; }
  if (p.push) {
    try {
      const r = await api("GET", `/api/v1/registry?project=${encodeURIComponent(p.name)}`);
      const who = r.found
        ? `credentials: ${r.username ? `user ${r.username}` : r.kind} from ${r.origin}${r.helper ? ` (helper ${r.helper})` : ""}`
        : r.error ? `credentials: ${r.error}` : "no credentials found: the push will be anonymous";
      $("push-help").textContent = `to ${p.push}; ${who}`;
    } catch (e) { $("push-help").textContent += ` (credentials unknown: ${e.message})`; }
  }
}

/** Runs `galley doctor` on the chosen project's push repository (GET /api/v1/registry/check)
 *  and says in one line whether a push would work, and what to do when not. */
async function checkRegistry() {
  const project = $("project").value;
  const out = $("check-result");
  const button = $("check-button");
  button.disabled = true;
  out.textContent = "checking…";
  try {
    const r = await api("GET", `/api/v1/registry/check?project=${encodeURIComponent(project)}`);
    if ($("project").value !== project) return;
    const bad = r.checks.filter((c) => c.status === "fail");
    const warn = r.checks.filter((c) => c.status === "warn");
    out.textContent = bad.length
      ? `a push would fail: ${bad.map((c) => `${c.name}: ${c.detail}${c.hint ? ` (${c.hint})` : ""}`).join("; ")}`
      : `a push would work (${r.checks.filter((c) => c.status === "ok").map((c) => c.name).join(", ")} ok)`
        + (warn.length ? `; ${warn.map((c) => `${c.name}: ${c.detail}`).join("; ")}` : "");
  } catch (e) {
    out.textContent = `the check failed: ${e.message}`;
  } finally {
    button.disabled = false;
  }
}

async function submitBuild(ev) {
  ev.preventDefault();
  fieldErrors(null);
  showAlert(null);
  const body = {
    project: $("project").value,
    variants: [...document.querySelectorAll("#variants input:checked")].map((i) => i.value),
    version: $("version").value.trim(),
    push: $("push").checked,
  };
  const ref = $("ref").value.trim();
  if (!$("ref-field").hidden && ref) body.ref = ref;
  const button = $("build-button");
  button.disabled = true;
  try {
    const accepted = await api("POST", "/api/v1/builds", body);
    announce(`Build ${accepted.id} queued`);
    location.hash = `#/builds/${accepted.id}`;
  } catch (e) {
    if (!fieldErrors(e)) showAlert(e);
    announce(`Build refused: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- the build view ----------------------------------------------------------------------------

let view = null; // { id, record, status, variants: [[name, target]], stageMs }

function cellId(variant, target, stage) { return `cell-${variant}-${target}-${stage}`.replace(/[^A-Za-z0-9_-]/g, "_"); }

function setCell(variant, target, stage, status, ms, detail, cache) {
  const td = $(cellId(variant, target, stage));
  if (!td) return;
  td.dataset.status = status;
  td.className = `s-${status}`;
  const from = cache === "cached" || cache === "remote" ? cache : null;
  const text = `${SYMBOL[status] || ""} ${status}${from && status === "succeeded" ? ` (${from})` : ""}`;
  td.replaceChildren(el("span", { text }), el("span", { class: "ms", text: secs(ms) }));
  td.title = detail || "";
  td.setAttribute("aria-label", `${variant} ${stage}: ${status}${cache === "cached" ? " from the cache" : cache === "remote" ? " from the shared cache" : ""}${ms !== undefined && ms !== null ? `, ${secs(ms)}` : ""}${detail ? `: ${detail}` : ""}`);
}

function renderMatrix(rows, withPush) {
  const stages = withPush ? STAGES : STAGES.filter((s) => s !== "push");
  const table = $("matrix");
  const head = el("tr", {}, el("th", { scope: "col", text: "variant" }), ...stages.map((s) => el("th", { scope: "col", text: s })));
  const body = rows.map(([variant, target]) => el("tr", {},
    el("th", { scope: "row", text: rows.some(([v, t]) => v === variant && t !== target) ? `${variant} (${arch(target)})` : variant }),
    ...stages.map((s) => {
      const td = el("td", { id: cellId(variant, target, s), class: "s-pending", "data-status": "pending" });
      td.append(el("span", { text: `${SYMBOL.pending} pending` }));
      return td;
    })));
  table.replaceChildren(table.querySelector("caption") || el("caption", { class: "visually-hidden", text: "Stages by variant" }),
    el("thead", {}, head), el("tbody", {}, ...body));
}

function setStatus(status, extra = "") {
  if (!view) return;
  const changed = view.status !== status;
  view.status = status;
  $("build-status").replaceChildren(badge(status), extra ? ` ${extra}` : "");
  const live = status === "queued" || status === "running";
  $("kill-button").hidden = !live;
  $("rebuild-button").hidden = live;
  $("repro-button").hidden = live || status !== "succeeded" || !!(view.record && view.record.inputs.repro_of);
  $("rebase-button").hidden = $("repro-button").hidden;
  if (changed) announce(`Build ${view.id} ${status}${extra ? `: ${extra}` : ""}`);
}

/** Lines of the build itself (no variant) show whatever the filter. */
const hiddenBy = (filter, li) => !!filter && li.dataset.variant !== "" && li.dataset.variant !== filter;

const log = {
  pending: [],
  scheduled: false,
  push(item) {
    this.pending.push(item);
    if (!this.scheduled) { this.scheduled = true; requestAnimationFrame(() => this.flush()); }
  },
  flush() {
    this.scheduled = false;
    const ol = $("log");
    const follow = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
    const filter = $("log-filter").value;
    const frag = document.createDocumentFragment();
    for (const li of this.pending) {
      li.hidden = hiddenBy(filter, li);
      frag.append(li);
    }
    this.pending = [];
    ol.append(frag);
    if (follow) ol.scrollTop = ol.scrollHeight;
    $("jump").hidden = follow;
  },
};

function logLine(e) {
  const d = e.data;
  let li;
  if (e.kind === "log") {
    li = el("li", { class: d.stream || "", "data-id": e.id, "data-variant": d.variant || "" },
      el("span", { class: "who", text: `${d.variant ? `[${d.variant}${view && view.multiTarget ? ` ${arch(d.target)}` : ""}] ` : ""}${d.stage}: ` }),
      el("span", { class: "text", text: d.line }));
  } else if (e.kind === "dropped") {
    li = el("li", { class: "marker", "data-id": e.id, "data-variant": "", text: d.message });
  } else if (e.kind === "end") {
    li = el("li", { class: "end", "data-id": e.id, "data-variant": "", text: `build ${d.status}${d.error ? `: ${d.error}` : ""}` });
  } else return;
  log.push(li);
}

function onEvent(e) {
  const d = e.data;
  switch (e.kind) {
    case "log": case "dropped": logLine(e); break;
    case "stage": setCell(d.variant, d.target, d.stage, d.status, d.ms, d.detail, d.cache); break;
    case "status": setStatus(d.status); break;
    case "source": {
      if (d.commit) view.meta.commit = `${d.commit.slice(0, 12)}${d.dirty ? " (dirty)" : ""}`;
      renderMeta();
      break;
    }
    case "report": renderResults(d); break;
    case "verdict": renderVerdict(d); break;
    case "end": {
      logLine(e);
      const extra = d.status === "cancelled"
        ? `by ${d.cancelled_by}${d.forced_kill ? ", forced kill (SIGKILL) needed" : ", stopped on SIGTERM"}`
        : d.error ? d.error : "";
      setStatus(d.status, extra);
      $("conn").textContent = "";
      break;
    }
  }
}

function renderMeta() {
  const r = view.record;
  const parts = [`${r.project} ${r.inputs.version}`, `variants ${r.inputs.variants.join(", ")}`];
  if (r.inputs.ref) parts.push(`ref ${r.inputs.ref}`);
  if (view.meta.commit) parts.push(`commit ${view.meta.commit}`);
  parts.push(`started by ${r.started_by}`);
  if (r.worker) parts.push(`on worker ${r.worker}`);
  if (r.inputs.push) parts.push("push");
  if (r.inputs.repro_of) parts.push(`repro of build ${r.inputs.repro_of}`);
  if (r.inputs.rebase_of) parts.push(`rebase of build ${r.inputs.rebase_of}`);
  if (r.report && r.report.base) parts.push(`base ${r.report.base.name} (${r.report.base.digest.slice(0, 19)})`);
  $("build-meta").textContent = parts.join(" · ");
}

/** Follows the build's events, resuming after a dropped connection with Last-Event-ID. */
function follow(id) {
  const ctl = new AbortController();
  const s = { id, last: 0, abort: () => ctl.abort() };
  (async () => {
    let attempt = 0;
    while (!ctl.signal.aborted) {
      try {
        const h = headers();
        if (s.last) h["Last-Event-ID"] = String(s.last);
        const resp = await fetch(`/api/v1/builds/${id}/events`, { headers: h, signal: ctl.signal });
        if (resp.status === 401) { await askToken("That token was refused. Enter a valid one."); continue; }
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        $("conn").textContent = s.last ? "reconnected: following the build" : "following the build";
        attempt = 0;
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "", ev = { data: [] };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            let line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line.endsWith("\r")) line = line.slice(0, -1);
            if (line === "") {
              if (ev.id !== undefined) {
                const e = { id: ev.id, kind: ev.event || "message", data: JSON.parse(ev.data.join("\n") || "null") };
                if (e.id > s.last) { s.last = e.id; onEvent(e); }
                if (e.kind === "end") { $("conn").textContent = ""; return; }
              }
              ev = { data: [] };
              continue;
            }
            if (line.startsWith(":")) continue; // heartbeat
            const c = line.indexOf(":");
            const field = c < 0 ? line : line.slice(0, c);
            let value = c < 0 ? "" : line.slice(c + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (field === "id") ev.id = Number(value);
            else if (field === "event") ev.event = value;
            else if (field === "data") ev.data.push(value);
          }
        }
      } catch (err) {
        if (ctl.signal.aborted) return;
      }
      attempt += 1;
      $("conn").textContent = `connection lost: reconnecting (attempt ${attempt})`;
      await sleep(Math.min(5000, 400 * attempt));
    }
  })();
  return s;
}

async function openBuild(id) {
  if (stream && stream.id === id) return;
  if (stream) stream.abort();
  $("build-title").textContent = `Build ${id}`;
  $("log").replaceChildren();
  $("results").hidden = true;
  $("repro").hidden = true;
  $("repro").replaceChildren();
  $("build-status").replaceChildren();
  $("build-meta").textContent = "";
  let record;
  try {
    record = await api("GET", `/api/v1/builds/${id}`);
  } catch (e) { showAlert(e); return; }
  const rows = [];
  for (const v of record.variants) {
    const targets = [...new Set(v.stages.map((s) => s.target))];
    for (const t of targets.length ? targets : ["x86_64-unknown-linux-musl"]) rows.push([v.name, t]);
  }
  view = { id, record, status: null, meta: { commit: record.commit ? `${record.commit.slice(0, 12)}${record.dirty ? " (dirty)" : ""}` : null },
    multiTarget: new Set(rows.map((r) => r[1])).size > 1 };
  renderMatrix(rows, record.inputs.push);
  renderMeta();
  checkBase(record);
  const filter = $("log-filter");
  filter.replaceChildren(el("option", { value: "", text: "every variant" }),
    ...record.inputs.variants.map((v) => el("option", { value: v, text: v })));
  renderReproLink(record);
  setStatus(record.status);
  // Everything (stages, log, results) comes from the stream: replayed, then live.
  stream = follow(id);
}

function renderResults(report) {
  const cards = [];
  const chartRows = [];
  for (const v of report.variants) {
    const card = el("article", { class: "card", "aria-label": `variant ${v.variant}` });
    card.append(el("h4", {}, `${v.variant} `, badge(v.status)));
    const ref = v.push && v.push.references && v.push.references[0];
    const local = v.tags && v.tags[0] ? `oci:${report.output}:${v.tags[0]}` : null;
    const image = ref || (v.digest ? `${local || report.output}@${v.digest}` : null);
    if (image) card.append(copyRow("Image", image));
    if (v.digest) {
      const pull = ref ? `docker pull ${ref.replace(/:[^:/@]+@/, "@")}` : `skopeo copy ${local} docker://REGISTRY/REPOSITORY:${v.tags[0]}`;
      card.append(copyRow(ref ? "Pull" : "Publish", pull));
    }
    for (const p of v.platforms) {
      const z = p.sizes;
      card.append(el("p", { class: "sizes", text: `${p.platform}: ${bytes(z.raw)} raw → ${bytes(z.stripped)} stripped → ${z.compressed ? bytes(z.compressed) + " compressed" : "not compressed"} → ${bytes(z.image)} image` }));
      if (p.sccache) {
        const s = p.sccache;
        const rate = s.hits + s.misses ? Math.round((s.hits * 100) / (s.hits + s.misses)) : 0;
        card.append(el("p", { class: "sccache", text: `sccache: ${s.hits} hits, ${s.misses} misses, ${s.not_cacheable} not cacheable (hit rate ${rate}%)` }));
      }
      chartRows.push({ label: v.platforms.length > 1 ? `${v.variant} ${arch(p.target)}` : v.variant, stages: p.stages });
    }
    const warnings = [...(v.warnings || []), ...(v.push && v.push.withheld ? [v.push.withheld] : [])];
    if (v.error) card.append(el("p", { class: "error", text: v.error }));
    if (warnings.length) card.append(el("ul", { class: "warnings", "aria-label": "warnings" }, ...warnings.map((w) => el("li", { text: w }))));
    cards.push(card);
  }
  const rc = report.remote_cache;
  if (rc) {
    const shared = el("article", { class: "card", "aria-label": "shared stage cache" });
    shared.append(el("h4", { text: "Shared stage cache" }),
      el("p", { text: `${rc.repository}: ${rc.hits} hits, ${rc.misses} misses, ${rc.refused} refused; ${rc.uploaded} uploaded, ${rc.present} already there (reads: ${rc.reads})` }));
    if (rc.warnings && rc.warnings.length) shared.append(el("ul", { class: "warnings", "aria-label": "shared cache warnings" }, ...rc.warnings.map((w) => el("li", { text: w }))));
    cards.push(shared);
  }
  $("result-cards").replaceChildren(...cards);
  $("chart").replaceChildren(chart(chartRows));
  $("results").hidden = false;
}

/** On a build that was reproduced: the newest repro and its answer. */
function renderReproLink(record) {
  const r = record.reproduced;
  if (!r || record.inputs.repro_of) return;
  const answer = r.identical === true ? "identical: every digest matches"
    : r.identical === false ? "DIFFERENT: see what differs"
    : r.status === "queued" || r.status === "running" ? r.status : `no verdict (${r.status})`;
  const status = r.identical === true ? "succeeded" : r.identical === false ? "failed" : r.status;
  $("repro").replaceChildren(el("p", {}, el("strong", { text: "Reproducibility: " }), badge(status), " ",
    el("a", { href: `#/builds/${r.id}`, text: `build ${r.id}` }), `: ${answer}`));
  $("repro").hidden = false;
}

/** On a repro build: its verdict, tools first, then every difference down to the key or file. */
function renderVerdict(v) {
  const of = view && view.record.inputs.repro_of;
  const head = el("h3", {}, `Repro of `, el("a", { href: `#/builds/${of}`, text: `build ${of}` }), ": ",
    badge(v.identical ? "succeeded" : "failed"), v.identical ? " identical: every digest matches" : " DIFFERENT");
  const tools = el("ul", { class: "tools", "aria-label": "tool versions" },
    ...v.tools.map((t) => el("li", { class: `t-${t.status.replace(" ", "-")}`,
      text: t.status === "same" ? `${t.tool}: ${t.current} (as recorded)`
        : t.status === "not recorded" ? `${t.tool}: not recorded in the report; here ${t.current || "missing too"}`
        : t.status === "missing" ? `${t.tool}: missing here; recorded ${t.recorded}`
        : `${t.tool}: differs: recorded ${t.recorded}, here ${t.current}` })));
  const parts = [head, el("p", { class: "meta", text: `Sources: ${v.sources}` }), tools];
  for (const n of v.notes) parts.push(el("p", { class: "meta", text: `Note: ${n}` }));
  for (const variant of v.variants) {
    const item = el("article", { class: "card", "aria-label": `verdict of ${variant.variant}` },
      el("h4", {}, `${variant.variant} `, badge(variant.identical ? "succeeded" : "failed"), variant.identical ? " identical" : " different"));
    if (variant.rebuilt) item.append(el("p", {}, el("code", { text: variant.rebuilt })));
    const diffs = el("ul", { class: "diffs" });
    for (const d of variant.differences) {
      const li = el("li", {}, el("strong", { text: `${d.what}${d.platform ? ` (${d.platform})` : ""}` }),
        el("span", { class: "mono", text: ` ${d.recorded || "–"} → ${d.rebuilt || "–"}` }));
      const sub = el("ul");
      for (const k of d.keys || []) sub.append(el("li", { class: "mono", text: `${k.key}: ${k.recorded ?? "(absent)"} → ${k.rebuilt ?? "(absent)"}` }));
      for (const f of d.files || []) {
        sub.append(el("li", { class: "mono", text: `${f.path} ${f.change}${f.fields.length ? ": " : ""}${f.fields.map((x) => `${x.key} ${x.recorded} → ${x.rebuilt}`).join("; ")}` }));
      }
      if (d.note) sub.append(el("li", { text: d.note }));
      if (sub.children.length) li.append(sub);
      diffs.append(li);
    }
    if (variant.differences.length) item.append(diffs);
    parts.push(item);
  }
  $("repro").replaceChildren(...parts);
  $("repro").hidden = false;
  announce(`Repro ${v.identical ? "identical" : "different"}`);
}

async function reproduce() {
  if (!view) return;
  try {
    const r = await api("POST", `/api/v1/builds/${view.id}/repro`);
    announce(`Repro ${r.id} queued`);
    location.hash = `#/builds/${r.id}`;
  } catch (e) { showAlert(e); }
}

/** Says when a finished build's base tag now resolves to another digest than it was built on
 *  (GET /api/v1/registry/base): the Rebase button then moves its images onto it. */
async function checkBase(record) {
  const moved = $("base-moved");
  moved.hidden = true;
  const base = record.report && record.report.base;
  if (!base || record.status !== "succeeded" || record.inputs.repro_of) return;
  try {
    const now = await api("GET", `/api/v1/registry/base?project=${encodeURIComponent(record.project)}`);
    if (!view || view.id !== record.id || now.digest === base.digest) return;
    moved.textContent = `base moved: ${now.base} is now ${now.digest.slice(0, 19)}, this build is on ${base.digest.slice(0, 19)}: Rebase moves its images onto it, without compiling`;
    moved.hidden = false;
  } catch (e) { /* the base cannot be read now: nothing to say about it */ }
}

async function rebase() {
  if (!view) return;
  try {
    const r = await api("POST", `/api/v1/builds/${view.id}/rebase`);
    announce(`Rebase ${r.id} queued`);
    location.hash = `#/builds/${r.id}`;
  } catch (e) { showAlert(e); }
}

function copyRow(label, text) {
  const code = el("code", { text });
  const button = el("button", { type: "button", class: "quiet", text: "Copy", "aria-label": `Copy ${label.toLowerCase()}: ${text}` });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      const r = document.createRange();
      r.selectNodeContents(code);
      const s = getSelection(); s.removeAllRanges(); s.addRange(r);
      button.textContent = "Selected: press Ctrl+C";
    }
    announce(`${label} copied`);
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  });
  return el("div", { class: "copyrow" }, el("span", { text: `${label}:` }), code, button);
}

/** A stacked bar per variant of its stage durations, drawn as SVG; the numbers are in the text. */
function chart(rows) {
  const ns = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const max = Math.max(1, ...rows.map((r) => r.stages.reduce((a, st) => a + st.ms, 0)));
  const labelW = 120, barW = 560, rowH = 26, legendH = 26;
  const shades = ["#1f5fbf", "#5b8fd9", "#17703a", "#8a5a00", "#7b3fb8", "#b3261e", "#4c6b73", "#9c2f6e"];
  const svg = s("svg", { viewBox: `0 0 ${labelW + barW + 90} ${rows.length * rowH + legendH + 8}`, role: "img" });
  const summary = rows.map((r) => `${r.label}: ${r.stages.map((st) => `${st.stage} ${secs(st.ms)}`).join(", ")}`).join("; ");
  svg.append(s("title", {}, `Stage durations. ${summary}`));
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    svg.append(s("text", { x: 0, y: y + 15 }, r.label));
    let x = labelW;
    r.stages.forEach((st) => {
      const w = Math.max(1, (st.ms / max) * barW);
      const k = STAGES.indexOf(st.stage);
      const rect = s("rect", { x, y, width: w, height: rowH - 8, fill: shades[k % shades.length], stroke: "currentColor", "stroke-width": 0.5 });
      rect.append(s("title", {}, `${r.label} ${st.stage}: ${secs(st.ms)}`));
      svg.append(rect);
      if (w > 46) svg.append(s("text", { x: x + 3, y: y + 13, class: "on-bar" }, st.stage.slice(0, 6)));
      x += w;
    });
    svg.append(s("text", { x: x + 6, y: y + 15 }, secs(r.stages.reduce((a, st) => a + st.ms, 0))));
  });
  let lx = 0;
  const ly = rows.length * rowH + 10;
  STAGES.forEach((st, k) => {
    svg.append(s("rect", { x: lx, y: ly, width: 12, height: 12, fill: shades[k % shades.length] }));
    svg.append(s("text", { x: lx + 16, y: ly + 11 }, st));
    lx += 96;
  });
  return svg;
}

async function kill() {
  if (!view) return;
  const button = $("kill-button");
  button.disabled = true;
  button.textContent = "Killing…";
  announce(`Killing build ${view.id}`);
  try {
    const r = await api("POST", `/api/v1/builds/${view.id}/cancel`);
    if (r.status === "cancelled") {
      setStatus("cancelled", `by ${r.cancelled_by}${r.forced_kill ? ", forced kill (SIGKILL) needed" : ", stopped on SIGTERM"}`);
    }
  } catch (e) { showAlert(e); }
  button.disabled = false;
  button.textContent = "Kill";
}

async function rebuild() {
  if (!view) return;
  try {
    const r = await api("POST", `/api/v1/builds/${view.id}/rebuild`);
    announce(`Build ${r.id} queued`);
    location.hash = `#/builds/${r.id}`;
  } catch (e) { showAlert(e); }
}

// ---- history -----------------------------------------------------------------------------------

let nextBefore = null;

async function loadHistory(fresh) {
  if (fresh) {
    nextBefore = null;
    $("history-rows").replaceChildren();
    if (!projects.length) { try { projects = await api("GET", "/api/v1/projects"); } catch (e) { showAlert(e); return; } }
    const sel = $("h-project");
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "all" }), ...projects.map((p) => el("option", { text: p.name })));
    sel.value = keep;
  }
  const q = new URLSearchParams({ limit: "25" });
  if ($("h-project").value) q.set("project", $("h-project").value);
  if ($("h-status").value) q.set("status", $("h-status").value);
  if (nextBefore) q.set("before", String(nextBefore));
  let page;
  try { page = await api("GET", `/api/v1/builds?${q}`); } catch (e) { showAlert(e); return; }
  const rows = page.builds.map((b) => {
    const again = el("button", { type: "button", class: "quiet", text: "Rebuild", "aria-label": `Rebuild build ${b.id}` });
    again.addEventListener("click", async () => {
      try {
        const r = await api("POST", `/api/v1/builds/${b.id}/rebuild`);
        location.hash = `#/builds/${r.id}`;
      } catch (e) { showAlert(e); }
    });
    return el("tr", {},
      el("td", {}, el("a", { href: `#/builds/${b.id}`, text: `#${b.id}` })),
      el("td", {}, badge(b.status)),
      el("td", { text: b.project }),
      el("td", { text: b.inputs.version }),
      el("td", { text: b.inputs.variants.join(", ") }),
      el("td", { text: secs(b.duration_ms) }),
      el("td", { text: b.started_by }),
      el("td", { text: b.worker || "" }),
      el("td", {}, el("time", { datetime: b.created_at, text: new Date(b.created_at).toLocaleString() })),
      el("td", {}, again));
  });
  $("history-rows").append(...rows);
  nextBefore = page.next_before || null;
  $("older").hidden = !nextBefore;
  $("history-empty").hidden = $("history-rows").children.length > 0;
  if (fresh) loadWorkers();
}

/** The fleet's workers (every `galley serve` on the same store): who is alive, what runs where. */
async function loadWorkers() {
  let workers;
  try { workers = await api("GET", "/api/v1/workers"); } catch (e) { showAlert(e); return; }
  $("worker-rows").replaceChildren(...workers.map((w) => el("tr", {},
    el("td", { text: w.this ? `${w.name} (this one)` : w.name }),
    el("td", { text: w.alive ? "alive" : "gone" }),
    el("td", { text: w.version }),
    el("td", {}, el("time", { datetime: w.last_seen, text: new Date(w.last_seen).toLocaleString() })),
    el("td", {}, ...w.running.map((id) => el("a", { href: `#/builds/${id}`, text: `#${id} ` }))),
    el("td", { text: w.warm_projects.join(", ") }))));
}

// ---- wiring ------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  $("build-form").addEventListener("submit", submitBuild);
  $("check-button").addEventListener("click", checkRegistry);
  $("project").addEventListener("change", projectChanged);
  $("version").addEventListener("input", () => { versionEdited = true; });
  for (const b of document.querySelectorAll("[data-bump]")) {
    b.addEventListener("click", () => {
      if (bumps[b.dataset.bump]) { $("version").value = bumps[b.dataset.bump]; versionEdited = true; announce(`Version ${$("version").value}`); }
    });
  }
  $("kill-button").addEventListener("click", kill);
  $("rebuild-button").addEventListener("click", rebuild);
  $("repro-button").addEventListener("click", reproduce);
  $("rebase-button").addEventListener("click", rebase);
  $("log-filter").addEventListener("change", () => {
    const f = $("log-filter").value;
    for (const li of $("log").children) li.hidden = hiddenBy(f, li);
  });
  $("jump").addEventListener("click", () => { const ol = $("log"); ol.scrollTop = ol.scrollHeight; $("jump").hidden = true; });
  $("log").addEventListener("scroll", () => { const ol = $("log"); $("jump").hidden = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40; });
  $("history-filters").addEventListener("change", () => loadHistory(true));
  $("older").addEventListener("click", () => loadHistory(false));
  $("token-button").hidden = !sessionStorage.getItem(TOKEN_KEY);
  $("token-button").addEventListener("click", () => askToken("").then(route));
  route();
});
