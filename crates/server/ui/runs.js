// The runs list: filters in the URL, a page at a time (cursor), refreshed live from the stream of
// every run's events.

import { get, follow } from "./api.js";
import { h, put, badge, clear, time, duration, usd, toast } from "./dom.js";

export const RUN_STATES = ["PENDING", "PLANNING", "EXECUTING", "WAITING", "PAUSED", "COMPENSATING", "COMPLETED",
  "COMPENSATED", "FAILED", "CANCELLED"];

function toMs(local) {
  if (!local) return null;
  const ms = new Date(local).getTime();
  return Number.isNaN(ms) ? null : ms;
}

function toLocal(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// What a run row says, for the text filter (which searches the page shown).
function haystack(run) {
  return [run.id, run.workflow, run.goal, run.current_step, run.status, run.failure && run.failure.message]
    .filter(Boolean).join(" ").toLowerCase();
}

export function runsPage(main, params) {
  const stop = new AbortController();
  const filters = {
    status: params.get("status") || "",
    workflow: params.get("workflow") || "",
    after: params.get("after") || "",
    before: params.get("before") || "",
    text: params.get("text") || "",
    limit: params.get("limit") || "25",
  };
  const cursors = [null];
  let page = 0;
  let runs = [];
  let next = null;

  const status = h("select", { name: "status", "aria-label": "Status" }, h("option", { value: "", text: "any" }),
    RUN_STATES.map((st) => h("option", { value: st, text: st, selected: st === filters.status })));
  const workflow = h("input", { name: "workflow", value: filters.workflow, placeholder: "name", size: 14 });
  const after = h("input", { name: "after", type: "datetime-local", value: toLocal(filters.after) });
  const before = h("input", { name: "before", type: "datetime-local", value: toLocal(filters.before) });
  const text = h("input", { name: "text", type: "search", value: filters.text, placeholder: "id, step, error…",
    size: 18 });
  const live = h("span", { class: "live", text: "live" });
  const body = h("tbody");
  const info = h("span", { class: "muted" });
  const older = h("button", { type: "button", text: "Older →", onclick: () => { page += 1; cursors[page] = next; load(); } });
  const newer = h("button", { type: "button", text: "← Newer", onclick: () => { page -= 1; load(); } });

  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (workflow.value.trim()) q.set("workflow", workflow.value.trim());
    const a = toMs(after.value);
    const b = toMs(before.value);
    if (a) q.set("after", a);
    if (b) q.set("before", b);
    if (text.value.trim()) q.set("text", text.value.trim());
    const target = `#/runs${q.toString() ? `?${q}` : ""}`;
    if (location.hash === target) load(); else location.hash = target;
  } },
  h("label", {}, "Status", status), h("label", {}, "Workflow", workflow), h("label", {}, "Created after", after),
  h("label", {}, "Created before", before), h("label", {}, "Text (this page)", text),
  h("button", { class: "primary", type: "submit", text: "Filter" }),
  h("a", { href: "#/runs", text: "clear" }));

  put(main, 
    h("div", { class: "row" }, h("h1", { class: "grow", text: "Runs" }), live),
    form,
    h("div", { class: "table-wrap" }, h("table", { id: "runs" },
      h("thead", {}, h("tr", {},
        h("th", { text: "Run" }), h("th", { text: "Workflow" }), h("th", { text: "Status" }),
        h("th", { class: "hide-narrow", text: "Step" }), h("th", { class: "hide-narrow", text: "Created" }),
        h("th", { class: "num", text: "Duration" }), h("th", { class: "num", text: "Cost" }),
        h("th", { class: "num hide-narrow", text: "Tokens" }))),
      body)),
    h("div", { class: "pager" }, newer, older, info));

  function query() {
    const q = new URLSearchParams({ limit: filters.limit });
    if (filters.status) q.set("status", filters.status);
    if (filters.workflow) q.set("workflow", filters.workflow);
    if (filters.after) q.set("created_after", filters.after);
    if (filters.before) q.set("created_before", filters.before);
    if (cursors[page]) q.set("cursor", cursors[page]);
    return q;
  }

  function draw() {
    clear(body);
    const needle = filters.text.toLowerCase();
    const shown = needle ? runs.filter((r) => haystack(r).includes(needle)) : runs;
    const now = Date.now();
    for (const run of shown) {
      const end = run.finished_at_ms || (["WAITING", "PAUSED"].includes(run.status) ? run.updated_at_ms : now);
      const usage = run.usage || {};
      put(body, h("tr", { "data-run": run.id, "data-status": run.status },
        h("td", {}, h("a", { class: "mono", href: `#/runs/${encodeURIComponent(run.id)}`, text: run.id })),
        h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}`, text: run.workflow }),
          run.workflow_version ? h("span", { class: "muted", text: ` v${run.workflow_version}` }) : null),
        h("td", {}, badge(run.status)),
        h("td", { class: "hide-narrow mono", text: run.current_step || "" }),
        h("td", { class: "hide-narrow", text: time(run.created_at_ms) }),
        h("td", { class: "num", text: duration(end - run.created_at_ms) }),
        h("td", { class: "num", text: usage.cost_usd !== undefined ? usd(usage.cost_usd) : "" }),
        h("td", { class: "num hide-narrow",
          text: usage.tokens_in !== undefined ? String(usage.tokens_in + usage.tokens_out) : "" })));
    }
    if (shown.length === 0) {
      put(body, h("tr", {}, h("td", { colspan: 8, class: "muted",
        text: runs.length ? "No run on this page matches the text." : "No runs match these filters." })));
    }
    newer.disabled = page === 0;
    older.disabled = !next;
    info.textContent = `page ${page + 1} · ${shown.length} shown`;
  }

  let loading = false;
  let again = false;
  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const answer = await get(`/v1/runs?${query()}`);
      runs = answer.runs;
      next = answer.next_cursor;
      draw();
    } catch (e) {
      if (e.status !== 401) toast(`runs: ${e.message}`, true);
    } finally {
      loading = false;
      if (again) { again = false; load(); }
    }
  }

  // Any committed event may change a row on this page or add a run to the first page; a burst
  // of events costs one reload per 300 ms.
  let pending = null;
  follow("/v1/events/stream", (event) => {
    if (/approval|run_waiting|run_resumed/.test(event.event)) window.dispatchEvent(new Event("cairn:changed"));
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 300);
  }, (on) => live.classList.toggle("on", on), stop.signal);

  load();
  return () => { stop.abort(); clearTimeout(pending); };
}
