// The dashboard in a real browser (Debian's chromium driven by playwright-core), against a real
// `cairn serve` started by dashboard.rs. Exits non-zero with a message on the first thing that
// does not behave. Environment: CAIRN_URL, CAIRN_AUTH_URL + CAIRN_TOKEN (a second server with
// auth on), CAIRN_BROWSER_DIR (where playwright-core is installed), CAIRN_CHROMIUM, CAIRN_SHOTS.

import { createRequire } from "node:module";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.env.CAIRN_BROWSER_DIR, "package.json"));
const { chromium } = require("playwright-core");

const base = process.env.CAIRN_URL;
const shots = process.env.CAIRN_SHOTS;
fs.mkdirSync(shots, { recursive: true });
const step = (what) => console.log(`-- ${what}`);

async function api(method, url, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${url}: ${r.status} ${text}`);
  return JSON.parse(text);
}

// A service: `/publish` fails until told otherwise (the failed run's step calls it); `/notes`
// keeps what the agent's tool writes.
let healthy = false;
const notes = [];
const service = http.createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => {
    if (req.url === "/notes") {
      notes.push(JSON.parse(body || "null"));
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ saved: true, id: notes.length }));
      return;
    }
    res.writeHead(healthy ? 200 : 503, { "Content-Type": "application/json" });
    res.end(JSON.stringify(healthy ? { report: "published" }
      : { error: "the report service is down", detail: "<script>window.__owned=2</script>" }));
  });
});
await new Promise((resolve) => service.listen(Number(process.env.CAIRN_SERVICE_PORT), "127.0.0.1", resolve));
const serviceUrl = `http://127.0.0.1:${service.address().port}/publish`;

const browser = await chromium.launch({ executablePath: process.env.CAIRN_CHROMIUM, args: ["--no-sandbox"] });
const problems = [];
function watchConsole(page, allow) {
  page.on("console", (m) => {
    if (m.type() === "error" && !(allow && allow.test(m.text()))) problems.push(`console error on ${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught on ${page.url()}: ${e.message}`));
}
// A screenshot without the passing notice a click may have left.
const shot = async (page, name) => {
  await page.evaluate(() => { const t = document.getElementById("toast"); t.className = ""; t.textContent = ""; });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
};
const wait = (page, selector, what) => page.waitForSelector(selector, { timeout: 15000 }).catch(() => {
  throw new Error(`${what}: nothing matched ${selector} on ${page.url()}`);
});

let failed = false;
try {
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await desk.newPage();
  watchConsole(page);

  step("the runs page opens and follows the event stream");
  await page.goto(`${base}/`);
  await wait(page, "#runs", "the runs table");
  await wait(page, ".live.on", "the live indicator");

  step("a run waiting at an approval gate appears live");
  const report = {
    name: "weekly-report",
    steps: [
      { id: "gather", kind: "echo", with: { rows: 42, title: '<img src=x onerror="window.__owned=1">' } },
      { id: "review", kind: "approval", needs: ["gather"], approval: { prompt: "Publish the weekly report ({{ steps.gather.output.rows }} rows)?" } },
      { id: "publish", kind: "echo", needs: ["review"], with: { published: true } },
    ],
  };
  await api("POST", `${base}/v1/workflows`, { ...report, version: 1 });
  const gated = await api("POST", `${base}/v1/runs`, { workflow: "weekly-report", inputs: {} });
  await wait(page, `tr[data-run="${gated.id}"][data-status="WAITING"]`, "the new run, live, waiting");
  await shot(page, "runs");

  step("approve it in the page");
  await page.click('a[data-page="approvals"]');
  const card = `.approval[data-run="${gated.id}"]`;
  await wait(page, card, "the approval card");
  const asked = await page.textContent(card);
  if (!asked.includes("Publish the weekly report (42 rows)?")) throw new Error(`the card does not show the prompt: ${asked}`);
  await shot(page, "approvals");
  await page.click(`${card} button.primary`);
  await page.waitForSelector(card, { state: "detached", timeout: 15000 });

  step("the run completes and its graph and timeline render");
  await page.goto(`${base}/#/runs/${gated.id}`);
  await wait(page, '#graph g.node[data-step="publish"][data-status="COMPLETED"]', "the completed graph");
  // A link that does not carry a run id leads nowhere near the API.
  await page.goto(`${base}/#/runs/..%2Ftokens`);
  await wait(page, "#runs", "the runs list instead of a forged path");
  await page.goto(`${base}/#/runs/${gated.id}`);
  await wait(page, '#graph g.node[data-step="publish"][data-status="COMPLETED"]', "the completed graph");
  await wait(page, "#timeline rect.bar-wait", "the approval wait on the timeline");
  const bars = await page.locator("#timeline rect.bar-ok").count();
  if (bars < 3) throw new Error(`the timeline shows ${bars} succeeded attempts, not 3`);
  await page.click('#graph g.node[data-step="gather"]');
  await wait(page, '#step-detail[data-step="gather"]', "the step's detail");
  const output = await page.textContent("#step-detail");
  if (!output.includes('"rows": 42')) throw new Error(`the step's output is not shown: ${output}`);
  // Markup in run data is shown as text, never run.
  if (!output.includes('<img src=x onerror=')) throw new Error(`markup in the output is not shown as text: ${output}`);
  await shot(page, "run");
  await page.click('button[role="tab"]:has-text("Journal")');
  await wait(page, "#journal td:has-text('approval_decided')", "the journal");

  step("a failed run shows its error, and Retry from the button completes it");
  const flaky = {
    name: "publish-report",
    steps: [
      { id: "render", kind: "echo", with: { pages: 3 } },
      { id: "upload", kind: "http", needs: ["render"], with: { url: serviceUrl }, retry: { max_attempts: 1 } },
    ],
  };
  const broken = await api("POST", `${base}/v1/runs?wait=15s`, { workflow: flaky });
  if (broken.status !== "FAILED") throw new Error(`the flaky run is ${broken.status}, not FAILED`);
  await page.goto(`${base}/#/runs/${broken.id}`);
  await wait(page, "#run-error", "the run's error");
  const error = await page.textContent("#run-error");
  if (!error.includes("503") || !error.includes('"error":"the report service is down"') || !error.includes("<script>")) {
    throw new Error(`the error does not say what failed: ${error}`);
  }
  await wait(page, '#step-detail[data-step="upload"] #step-error', "the failed step's error");
  await shot(page, "run-failed");
  if (await page.evaluate(() => window.__owned)) throw new Error("markup in an error message ran");
  healthy = true;
  await page.click('#actions button:has-text("Retry")');
  await wait(page, 'h1 + .badge.s-COMPLETED, .row .badge.s-COMPLETED', "the retried run completed");
  await wait(page, '#graph g.node[data-step="upload"][data-status="COMPLETED"]', "the retried step completed");

  step("an agent's tool call waits; bad JSON arguments are refused in the page; edited ones are sent");
  const agent = await api("POST", `${base}/v1/runs`, { workflow: {
    name: "note-taker",
    steps: [{ id: "assistant", kind: "agent", with: { model: "quick", tools: ["notes"], max_turns: 4,
      task: "Leave the team a note that the weekly report is ready." } }],
  } });
  await page.click('a[data-page="approvals"]');
  const toolCard = `.approval[data-run="${agent.id}"]`;
  await wait(page, `${toolCard} textarea`, "the tool call's arguments");
  await page.fill(`${toolCard} textarea`, '{"body": {"text": "report ready"}');
  await wait(page, `${toolCard} .error-box:not([hidden])`, "the JSON error");
  let decided = 0;
  page.on("request", (r) => { if (r.method() === "POST" && r.url().includes("/approvals/")) decided += 1; });
  await page.click(`${toolCard} button:has-text("Approve with these arguments")`);
  await page.waitForTimeout(500);
  if (decided || notes.length || !(await page.$(toolCard))) throw new Error("arguments that are not JSON were sent");
  await page.fill(`${toolCard} textarea`, '{"body": {"text": "report ready, edited in the dashboard"}}');
  await shot(page, "tool-approval");
  await page.click(`${toolCard} button:has-text("Approve with these arguments")`);
  await page.waitForSelector(toolCard, { state: "detached", timeout: 15000 });
  await page.goto(`${base}/#/runs/${agent.id}?step=assistant`);
  await wait(page, '#graph g.node[data-step="assistant"][data-status="COMPLETED"]', "the agent's run completed");
  await wait(page, '#step-detail tr[data-call="3"]', "the agent's turns and tool call");
  const turns = await page.textContent("#step-detail table");
  for (const part of ["turn 1", "tool", "turn 2", "The note is saved."]) {
    if (!turns.includes(part)) throw new Error(`the turns do not show ${part}: ${turns}`);
  }
  if (notes.length !== 1 || notes[0].text !== "report ready, edited in the dashboard") {
    throw new Error(`the tool received ${JSON.stringify(notes)}`);
  }
  await shot(page, "agent");

  step("workflows, a definition, models and tools");
  await page.click('a[data-page="workflows"]');
  await wait(page, '#workflows a:has-text("weekly-report")', "the registry");
  await shot(page, "workflows");
  await page.click('#workflows a:has-text("weekly-report")');
  await wait(page, "h2:has-text('Definition')", "the definition viewer");
  await page.click('a[data-page="models"]');
  await wait(page, '#models tr[data-provider="offline"]', "the configured provider");
  await wait(page, '#models .badge:has-text("breaker closed")', "the breaker state");
  await shot(page, "models");

  step("a phone-sized viewport");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  watchConsole(small);
  await small.goto(`${base}/#/runs`);
  await wait(small, `tr[data-run="${gated.id}"]`, "the runs list on a phone");
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the runs page is ${overflow}px wider than a phone`);
  await shot(small, "runs-phone");
  await small.goto(`${base}/#/runs/${gated.id}`);
  await wait(small, '#graph g.node[data-step="publish"]', "the run on a phone");
  await shot(small, "run-phone");
  await phone.close();

  step("with auth on, the page asks for a token and keeps it for the tab");
  const locked = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const guarded = await locked.newPage();
  // The refused requests before a token is given are logged by the browser as failed loads.
  watchConsole(guarded, /status of 401/);
  await guarded.goto(`${process.env.CAIRN_AUTH_URL}/`);
  await wait(guarded, "#token", "the token prompt");
  await guarded.fill("#token", process.env.CAIRN_TOKEN);
  await guarded.click("form.login button");
  await wait(guarded, "#runs", "the runs page after the token");
  const kept = await guarded.evaluate(() => [sessionStorage.getItem("cairn.token") !== null, localStorage.length]);
  if (!kept[0] || kept[1] !== 0) throw new Error(`the token is not kept for the tab only: ${JSON.stringify(kept)}`);
  await locked.close();
  await desk.close();
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.message}`);
}
for (const context of browser.contexts()) {
  for (const p of context.pages()) {
    if (await p.evaluate(() => window.__owned).catch(() => undefined)) problems.push(`markup from run data ran on ${p.url()}`);
  }
}
await browser.close();
service.close();
if (problems.length) {
  console.error(problems.join("\n"));
  failed = true;
}
console.log(failed ? "dashboard: FAILED" : "dashboard: all checks passed");
process.exit(failed ? 1 : 0);
