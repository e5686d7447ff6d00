// The dashboard's shell: pages by URL hash, the token prompt, the approvals count in the header.

import { auth, get, ApiError } from "./api.js";
import { h, put, clear, toast } from "./dom.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { approvalsPage } from "./approvals.js";
import { workflowsPage, workflowPage, modelsPage } from "./catalog.js";

const main = document.getElementById("main");
let cleanup = null;

// Run ids and workflow names have fixed alphabets: a link that carries anything else (`..`,
// `/`, `?`) is not followed to an API path.
const routes = [
  [/^#\/runs\/(wf_[0-9A-Za-z]{1,64})$/, (m, q) => runPage(main, m[1], q)],
  [/^#\/runs$/, (m, q) => runsPage(main, q)],
  [/^#\/approvals$/, () => approvalsPage(main)],
  [/^#\/workflows\/([A-Za-z0-9_.-]{1,64})$/, (m, q) => workflowPage(main, m[1], q)],
  [/^#\/workflows$/, () => workflowsPage(main)],
  [/^#\/models$/, () => modelsPage(main)],
];

function route() {
  if (locked) return;
  if (cleanup) { cleanup(); cleanup = null; }
  const hash = location.hash || "#/runs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("header nav a")) {
    const on = path.startsWith(`#/${a.dataset.page}`);
    on ? a.setAttribute("aria-current", "page") : a.removeAttribute("aria-current");
  }
  for (const [pattern, render] of routes) {
    const m = path.match(pattern);
    if (m) {
      clear(main);
      const result = render(m, params);
      cleanup = typeof result === "function" ? result : null;
      return;
    }
  }
  location.hash = "#/runs";
}

// Asked once a request is refused for want of a valid token; kept in sessionStorage (this tab
// only, gone when it closes).
let locked = false;
function askForToken(error) {
  if (locked) return;
  locked = true;
  if (cleanup) { cleanup(); cleanup = null; }
  clear(main);
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "cairn_…",
    "aria-label": "API token" });
  const form = h("form", { class: "panel login", onsubmit: (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    auth.token = value;
    locked = false;
    who();
    route();
    countApprovals();
  } },
  h("h1", { text: "This server needs a token" }),
  h("p", { text: auth.token
    ? `The token you gave was refused (${error.message}). Paste another one.`
    : "Paste a bearer token made with `cairn tokens create NAME --role viewer` (or operator to steer runs). It is kept for this tab only." }),
  input, h("p", {}, h("button", { class: "primary", type: "submit", text: "Use token" })));
  put(main, form);
  input.focus();
}

function who() {
  const el = clear(document.getElementById("who"));
  if (auth.token) {
    put(el, "token set for this tab", h("button", { type: "button", text: "Forget token", onclick: () => {
      auth.token = null;
      who();
      route();
      countApprovals();
    } }));
  }
}

window.addEventListener("cairn:unauthorized", (e) => askForToken(e.detail));

// The number of steps waiting for a person, in the header.
async function countApprovals() {
  if (locked) return;
  try {
    const { approvals } = await get("/v1/approvals");
    const el = document.getElementById("approval-count");
    el.textContent = String(approvals.length);
    el.hidden = approvals.length === 0;
  } catch (e) {
    if (!(e instanceof ApiError)) toast(`approvals: ${e.message}`, true);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("cairn:changed", countApprovals);
who();
route();
countApprovals();
setInterval(countApprovals, 5000);
