// End-to-end tests of the kitchen in Debian's chromium (headless, driven by playwright-core),
// against a real `galley serve` on loopback building the tiny fixture for real. The page is
// reached through a small TCP proxy the tests can cut, to prove the event stream resumes without
// gaps or repeats. Screenshots go to target/kitchen-screenshots/.
//
//   node --test tests/web/   (scripts/test.sh runs it after cargo test, which builds galley)

import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// GALLEY_KITCHEN_WORK: where the service keeps its projects and data (the paths the pages show;
// scripts/kitchen-screenshot.sh picks a neutral one for the README's picture).
const work = process.env.GALLEY_KITCHEN_WORK || path.join(repo, "target/galley-tests/kitchen");
const shots = path.join(repo, "target/kitchen-screenshots");
const galleyBin = process.env.GALLEY_BIN || path.join(repo, "target/debug/galley");
const TOKEN = "kitchen-test-token-0123456789";

let service, proxy, browser, page;
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** Runs axe-core on the page as it is, in light and dark; returns the serious and critical
 *  findings (rule, impact, the first element), which fail the test. */
async function accessibilityFindings(view) {
  const found = [];
  for (const colorScheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme });
    // Evaluated through the debugging protocol: the kitchen's CSP (script-src 'self') rightly
    // refuses an inline script tag.
    if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) {
      await page.evaluate(axeSource);
    }
    // label-content-name-mismatch (WCAG 2.5.3, label in name) is experimental in axe and off
    // by default: the bump buttons once failed it.
    const result = await page.evaluate(() => window.axe.run(document, {
      resultTypes: ["violations"],
      rules: { "label-content-name-mismatch": { enabled: true } },
    }));
    for (const v of result.violations) {
      if (v.impact === "serious" || v.impact === "critical") {
        found.push(`${view} (${colorScheme}): ${v.id} [${v.impact}] ${v.help}: ${v.nodes[0]?.html ?? ""}`);
      }
    }
  }
  await page.emulateMedia({ colorScheme: "light" });
  return found;
}
const pageErrors = [];
// Set by a test that cuts the connection on purpose: the browser logs the failed requests.
let cutting = false;

function copyDir(src, dst) {
  fs.mkdirSync(dst, { recursive: true });
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.name === "target") continue;
    const s = path.join(src, e.name), d = path.join(dst, e.name);
    if (e.isDirectory()) copyDir(s, d); else fs.copyFileSync(s, d);
  }
}

/** The tiny fixture with a build script that sleeps `secs` (a compile that takes that long). */
function sleepyProject(name, secs) {
  const dir = path.join(work, name);
  copyDir(path.join(repo, "fixtures/tiny"), dir);
  fs.writeFileSync(path.join(dir, "build.rs"),
    `fn main() {\n    std::thread::sleep(std::time::Duration::from_secs(${secs}));\n}\n`);
  return dir;
}

/** A TCP proxy in front of the service; `cut()` drops every connection and stops listening a while. */
class Proxy {
  constructor(target) { this.target = target; this.sockets = new Set(); this.connections = 0; }
  async listen(port = 0) {
    this.server = net.createServer((client) => {
      this.connections += 1;
      const upstream = net.connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) { this.sockets.add(s); s.on("close", () => this.sockets.delete(s)); s.on("error", () => {}); }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    this.server.listen(port, "127.0.0.1");
    await once(this.server, "listening");
    this.port = this.server.address().port;
  }
  async cut(downMs) {
    const port = this.port;
    const closed = new Promise((r) => this.server.close(r));
    for (const s of this.sockets) s.destroy();
    await closed;
    await new Promise((r) => setTimeout(r, downMs));
    await this.listen(port);
  }
  url() { return `http://127.0.0.1:${this.port}`; }
}

async function startService() {
  const base = path.join(work, "base");
  if (!fs.existsSync(path.join(base, "index.json"))) {
    execFileSync("bash", [path.join(repo, "fixtures/base/make-base.sh"), base, "3.20"], { stdio: "inherit" });
  }
  const tiny = path.join(work, "tiny");
  copyDir(path.join(repo, "fixtures/tiny"), tiny);
  const slow = sleepyProject("slow", 600);
  const pause = sleepyProject("pause", 8);
  const config = path.join(work, "serve.toml");
  const projects = [["tiny", tiny], ["slow", slow], ["pause", pause]]
    .map(([n, p]) => `[projects.${n}]\npath = "${p}"\nbase = "oci:${base}:3.20"\n`).join("\n")
    // A project whose registry refuses connections: the registry check's failure line.
    + `\n[projects.unreachable]\npath = "${tiny}"\nbase = "oci:${base}:3.20"\npush = "127.0.0.1:1/team/tiny"\n`;
  fs.writeFileSync(config, `listen = "127.0.0.1:0"\ndata_dir = "${path.join(work, "data")}"\ncancel_grace = "3s"\nheartbeat = "2s"\n${projects}`);
  const child = spawn(galleyBin, ["serve", "--config", config], {
    env: {
      ...process.env,
      GALLEY_API_TOKEN: TOKEN,
      // Its own stage cache (the tests watch real compiles), the shared zig cache.
      GALLEY_CACHE_DIR: path.join(work, "cache"),
      ZIG_GLOBAL_CACHE_DIR: process.env.ZIG_GLOBAL_CACHE_DIR || path.join(process.env.HOME, ".cache/zig"),
    },
    stdio: ["ignore", "pipe", fs.openSync(path.join(work, "serve.err"), "w")],
  });
  const line = await new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).once("line", resolve);
    child.once("exit", (code) => reject(new Error(`galley serve exited ${code}: ${fs.readFileSync(path.join(work, "serve.err"), "utf8")}`)));
  });
  const url = new URL(line.replace("galley serve: listening on ", ""));
  return { child, host: url.hostname, port: Number(url.port), url: url.origin };
}

async function apiGet(p) {
  const r = await fetch(`${service.url}${p}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(r.status, 200, `GET ${p}`);
  return r.headers.get("content-type").startsWith("application/json") ? r.json() : r.text();
}

/** Every stored event id of the kinds the page shows in its log (log, dropped, end). */
async function storedLogIds(id) {
  const r = await fetch(`${service.url}/api/v1/builds/${id}/events`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const text = await r.text(); // a finished build's stream ends after its end event
  const ids = [];
  for (const block of text.split("\n\n")) {
    const idm = block.match(/^id: (\d+)$/m), kind = block.match(/^event: (\w+)$/m);
    if (idm && kind && ["log", "dropped", "end"].includes(kind[1])) ids.push(Number(idm[1]));
  }
  return ids;
}

const pageLogIds = () => page.$$eval("#log li", (lis) => lis.map((li) => Number(li.dataset.id)));
const buildId = () => Number(new URL(page.url()).hash.match(/#\/builds\/(\d+)/)[1]);

/** Processes whose environment carries the build's tag (none may be left after a kill). */
function tagged(tag) {
  const found = [];
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue;
      if (fs.readFileSync(`/proc/${pid}/environ`).toString().split("\0").includes(`GALLEY_BUILD_TAG=${tag}`)) found.push(pid);
    } catch { /* gone meanwhile */ }
  }
  return found;
}

async function newBuild(project, { variants, version } = {}) {
  await page.goto(`${proxy.url()}/#/new`);
  const form = page.locator("#build-form");
  const select = form.getByLabel("Project", { exact: true });
  await select.selectOption(project);
  await page.waitForFunction((p) => document.querySelector("#project-help").textContent.includes(p), project);
  if (variants) {
    for (const box of await page.$$("#variants input")) {
      const want = variants.includes(await box.getAttribute("value"));
      if ((await box.isChecked()) !== want) await box.click();
    }
  }
  const v = form.getByLabel("Version", { exact: true });
  await page.waitForFunction(() => document.querySelector("#version").value !== "");
  if (version !== undefined) await v.fill(version);
  // From the keyboard: Enter in the version field submits the form.
  await v.focus();
  await page.keyboard.press("Enter");
}

before(async () => {
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(shots, { recursive: true });
  service = await startService();
  proxy = new Proxy(service);
  await proxy.listen();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // The browser logs every 4xx the page handles (401 asks for the token, 422 shows the field):
  // those are expected; anything else (a script error, a CSP violation) is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of (401|422) /.test(m.text())) pageErrors.push(m.text());
  });
  // The token is asked for once and kept for the session.
  await page.goto(proxy.url());
  await page.getByLabel("Token", { exact: true }).fill(TOKEN);
  await page.getByRole("button", { name: "Use this token" }).click();
  await page.locator("#build-form").getByLabel("Project", { exact: true }).waitFor();
});

afterEach(() => {
  // A script error or a failed resource is a defect even when the test's checks passed.
  const errors = pageErrors.splice(0)
    .filter((e) => !(cutting && /net::ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE)/.test(e)));
  cutting = false;
  assert.deepEqual(errors, []);
});

after(async () => {
  await browser?.close();
  if (service) {
    service.child.kill("SIGTERM");
    await once(service.child, "exit");
  }
  proxy?.server.close();
});

test("a build of two variants shows its log live, every stage finishing and the digests", async () => {
  await newBuild("tiny", { variants: ["sqlite", "postgres"] });
  await page.waitForURL(/#\/builds\/\d+$/);
  const id = buildId();
  await page.locator("#log li", { hasText: "Compiling tiny" }).first().waitFor({ timeout: 120_000 });
  await page.locator("#build-status", { hasText: "succeeded" }).waitFor({ timeout: 300_000 });
  for (const variant of ["sqlite", "postgres"]) {
    const row = page.locator("#matrix tbody tr", { hasText: variant });
    const cells = await row.locator("td").evaluateAll((tds) => tds.map((td) => td.dataset.status));
    // Seven stages without a push: compile to attest (SBOM and provenance attached).
    assert.deepEqual(cells, Array(7).fill("succeeded"), variant);
    const heads = await page.locator("#matrix thead th").allTextContents();
    assert.ok(heads.some((h) => /attest/.test(h)), `an attest column: ${heads}`);
  }
  const record = await apiGet(`/api/v1/builds/${id}`);
  for (const v of record.variants) {
    const card = page.locator(".card", { hasText: v.name }).first();
    await card.locator("code", { hasText: v.digest }).first().waitFor();
    assert.match(await card.textContent(), /raw → .* stripped → .* compressed → .* image/);
  }
  assert.ok(await page.locator("#chart svg rect").count() >= 12, "the chart draws a bar per stage");
  // Status changes are announced to screen readers.
  assert.match(await page.locator("#announcer").textContent(), /succeeded/);
  await page.screenshot({ path: path.join(shots, "build-view.png"), fullPage: true });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(shots, "build-view-dark.png"), fullPage: true });
  await page.emulateMedia({ colorScheme: "light" });
});

test("reloading a finished build replays its whole log, and history opens it", async () => {
  const id = buildId();
  await page.reload();
  await page.locator("#log li.end").waitFor();
  assert.deepEqual(await pageLogIds(), await storedLogIds(id));
  await page.goto(`${proxy.url()}/#/history`);
  const row = page.locator("#history-rows tr", { hasText: `#${id}` });
  await row.waitFor();
  assert.match(await row.textContent(), /succeeded.*tiny.*0\.1\.0.*postgres, sqlite.*api/s);
  const filters = page.locator("#history-filters");
  await filters.getByLabel("Status", { exact: true }).selectOption("failed");
  await page.locator("#history-empty").waitFor();
  await filters.getByLabel("Status", { exact: true }).selectOption("");
  await row.getByRole("link").click();
  await page.locator("#log li.end").waitFor();
  await page.screenshot({ path: path.join(shots, "history-build.png"), fullPage: true });
});

test("Reproduce rebuilds a finished build elsewhere and shows the verdict on both build views", async () => {
  const original = buildId();
  await page.getByRole("button", { name: "Reproduce" }).click();
  await page.waitForURL((u) => /#\/builds\/\d+$/.test(u.hash) && buildId() !== original);
  const repro = buildId();
  await page.locator("#build-status", { hasText: "succeeded" }).waitFor({ timeout: 300_000 });
  const panel = page.locator("#repro");
  await panel.locator("h3", { hasText: "identical" }).waitFor();
  assert.match(await panel.textContent(), new RegExp(`Repro of build ${original}`));
  for (const v of ["sqlite", "postgres"]) {
    assert.match(await panel.locator(".card", { hasText: v }).textContent(), /identical/);
  }
  const record = await apiGet(`/api/v1/builds/${repro}`);
  assert.equal(record.verdict.identical, true);
  assert.equal(record.inputs.repro_of, original);
  await page.screenshot({ path: path.join(shots, "repro-verdict.png"), fullPage: true });
  // The original build's view links its repro and says what it found.
  await panel.getByRole("link", { name: `build ${original}` }).click();
  await page.locator("#repro", { hasText: "Reproducibility" }).waitFor();
  assert.match(await page.locator("#repro").textContent(), new RegExp(`build ${repro}: identical`));
});

test("Rebase moves a finished build's images onto the base as it is, without compiling", async () => {
  // The build the view shows (a finished one: the previous tests end there), loaded afresh.
  const original = buildId();
  await page.goto(`${proxy.url()}/#/builds/${original}`);
  await page.locator("#build-status", { hasText: "succeeded" }).waitFor();
  const before = await apiGet(`/api/v1/builds/${original}`);
  assert.match(await page.locator("#build-meta").textContent(), /base oci:base:3\.20 \(sha256:/);
  await page.getByRole("button", { name: "Rebase" }).click();
  await page.waitForURL((u) => /#\/builds\/\d+$/.test(u.hash) && buildId() !== original);
  const rebased = buildId();
  await page.locator("#build-status", { hasText: "succeeded" }).waitFor({ timeout: 120_000 });
  assert.match(await page.locator("#build-meta").textContent(), new RegExp(`rebase of build ${original}`));
  await page.locator("#log li", { hasText: "without compiling" }).first().waitFor();
  const record = await apiGet(`/api/v1/builds/${rebased}`);
  assert.equal(record.inputs.rebase_of, original);
  // The base did not move: the same images, digest for digest, and nothing says it moved.
  for (const v of before.variants) {
    assert.equal(record.variants.find((x) => x.name === v.name).digest, v.digest, v.name);
  }
  assert.equal(await page.locator("#base-moved").isHidden(), true);
  // The base's tag moves (a label added to it): the build view says so.
  execFileSync("umoci", ["config", "--image", `${path.join(work, "base")}:3.20`, "--config.label", "moved=yes"]);
  await page.goto(`${proxy.url()}/#/builds/${original}`);
  const moved = page.locator("#base-moved", { hasText: "base moved" });
  await moved.waitFor();
  assert.match(await moved.textContent(), /Rebase moves its images onto it/);
});

test("a bad version and no variant are explained next to their fields", async () => {
  await newBuild("tiny", { version: "1.4" });
  const err = page.locator("#err-version");
  await err.waitFor();
  assert.match(await err.textContent(), /not a semantic version/);
  assert.equal(await page.locator("#version").getAttribute("aria-invalid"), "true");
  assert.match(page.url(), /#\/new$/, "nothing was started");
  for (const box of await page.$$("#variants input")) if (await box.isChecked()) await box.click();
  await page.locator("#build-form").getByLabel("Version", { exact: true }).fill("1.4.0");
  await page.getByRole("button", { name: "Build" }).click();
  await page.locator("#err-variants", { hasText: "no variant to build" }).waitFor();
  await page.screenshot({ path: path.join(shots, "bad-version.png") });
});

test("the registry check says in one line why a push would fail, and what to do", async () => {
  await page.goto(`${proxy.url()}/#/new`);
  await page.locator("#build-form").getByLabel("Project", { exact: true }).selectOption("unreachable");
  const button = page.getByRole("button", { name: "Check the registry" });
  await button.waitFor();
  await button.click();
  const result = page.locator("#check-result", { hasText: "a push would fail" });
  await result.waitFor({ timeout: 30_000 });
  assert.match(await result.textContent(), /reach: .*127\.0\.0\.1:1.*cannot be reached.*\(check the host and port/);
  // A project without a push repository offers no check.
  await page.locator("#build-form").getByLabel("Project", { exact: true }).selectOption("tiny");
  await page.waitForFunction(() => document.querySelector("#check-button").hidden);
});

test("Kill stops a running build and says whether SIGKILL was needed", async () => {
  await newBuild("slow", { variants: ["sqlite"] });
  await page.waitForURL(/#\/builds\/\d+$/);
  const id = buildId();
  const { process_tag: tag } = await apiGet(`/api/v1/builds/${id}`);
  // The build script runs (and sleeps) once its process is tagged.
  const comm = (p) => { try { return fs.readFileSync(`/proc/${p}/comm`, "utf8"); } catch { return ""; } };
  for (let i = 0; i < 600 && !tagged(tag).some((p) => comm(p).startsWith("build-script")); i++) {
    await new Promise((r) => setTimeout(r, 200));
  }
  await page.getByRole("button", { name: "Kill" }).click();
  const status = page.locator("#build-status");
  await status.filter({ hasText: "cancelled" }).waitFor({ timeout: 30_000 });
  assert.match(await status.textContent(), /by api, stopped on SIGTERM/);
  assert.deepEqual(tagged(tag), [], "no process of the build is left");
  await page.locator("#log li.end", { hasText: "cancelled" }).waitFor();
  await page.screenshot({ path: path.join(shots, "killed.png"), fullPage: true });
});

test("the log goes on without gaps or repeats when the event stream is cut mid-build", async () => {
  await newBuild("pause", { variants: ["sqlite"] });
  await page.waitForURL(/#\/builds\/\d+$/);
  const id = buildId();
  await page.locator("#log li", { hasText: "Compiling tiny" }).first().waitFor({ timeout: 120_000 });
  const before = proxy.connections;
  cutting = true;
  await proxy.cut(2500);
  await page.locator("#conn", { hasText: "reconnect" }).waitFor();
  await page.locator("#build-status", { hasText: "succeeded" }).waitFor({ timeout: 300_000 });
  assert.ok(proxy.connections > before, "the page connected again");
  const shown = await pageLogIds();
  assert.equal(new Set(shown).size, shown.length, "a line was shown twice");
  assert.deepEqual(shown, await storedLogIds(id), "the page's log differs from the stored one");
});

test("every view passes an accessibility checker (axe-core) in light and dark, with no serious finding", async () => {
  const id = (await apiGet("/api/v1/builds?limit=1&status=succeeded")).builds[0].id;
  const findings = [];
  await page.goto(`${proxy.url()}/#/new`);
  await page.locator("#build-form").getByLabel("Project", { exact: true }).waitFor();
  await page.locator("[data-bump='minor']", { hasText: /\d/ }).waitFor();
  findings.push(...await accessibilityFindings("new build"));
  await page.goto(`${proxy.url()}/#/builds/${id}`);
  await page.locator("#log li.end").waitFor();
  findings.push(...await accessibilityFindings("build view"));
  await page.goto(`${proxy.url()}/#/history`);
  await page.locator("#history-rows tr").first().waitFor();
  await page.locator("#worker-rows tr").first().waitFor();
  findings.push(...await accessibilityFindings("history"));
  assert.deepEqual(findings, []);
});
