// One run: what it is, buttons to steer it, its graph, its timeline, each step in full, and its
// journal — kept current from the run's event stream.

import { get, post, follow } from "./api.js";
import { h, s, put, badge, clear, time, duration, usd, json, facts, toast } from "./dom.js";

const TERMINAL = new Set(["COMPLETED", "COMPENSATED", "FAILED", "CANCELLED"]);
const MAX_TIMELINE_ROWS = 200;

// `fetch[3]` and `rounds#2` are instances of `fetch` and `rounds`; a compensation's calls are
// under `STEP.compensate`.
export function groupOf(stepId) {
  const m = stepId.match(/^([^[#]+)[[#]/);
  return m ? m[1] : stepId.replace(/\.compensate$/, "");
}

function short(value, max) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function runPage(main, id, params) {
  const stop = new AbortController();
  const base = `/v1/runs/${encodeURIComponent(id)}`;
  let detail = null;
  let events = [];
  let selected = params.get("step");
  let tab = params.get("tab") || "step";
  let following = null;

  const head = h("div");
  const actions = h("div", { class: "row", id: "actions" });
  const graph = h("div", { class: "graph-wrap", id: "graph" });
  const gantt = h("div", { class: "gantt-wrap", id: "timeline" });
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const pane = h("div", { id: "pane" });
  put(main, head, actions,
    h("h2", { text: "Graph" }), graph,
    h("h2", { text: "Timeline" }),
    h("div", { class: "legend" },
      [["attempt", "attempt running"], ["ok", "attempt succeeded"], ["failed", "attempt failed"],
        ["retry", "retry wait"], ["wait", "waiting (timer, signal, approval)"], ["call", "call (model, tool, http)"]]
        .map(([c, label]) => h("span", {}, h("span", { class: `swatch ${c}` }), label))),
    gantt, tabs, pane);

  function select(step, newTab) {
    selected = step;
    if (newTab) tab = newTab;
    const q = new URLSearchParams();
    if (selected) q.set("step", selected);
    if (tab !== "step") q.set("tab", tab);
    history.replaceState(null, "", `#/runs/${encodeURIComponent(id)}${q.toString() ? `?${q}` : ""}`);
    drawGraph();
    drawTabs();
    drawPane();
  }

  // ---- the run and its buttons

  function drawHead() {
    const run = detail;
    const end = run.finished_at_ms || Date.now();
    const usage = run.usage;
    put(clear(head), 
      h("div", { class: "row" },
        h("h1", { class: "grow" }, "Run ", h("span", { class: "mono", text: run.id })),
        badge(run.status)),
      h("div", { class: "panel" }, facts([
        ["Workflow", h("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}`, text: run.workflow })],
        ["Version", run.workflow_version],
        ["Goal", run.goal],
        ["Step", run.current_step],
        ["Created", time(run.created_at_ms)],
        ["Finished", time(run.finished_at_ms)],
        ["Duration", duration(end - run.created_at_ms)],
        ["Cost", usage ? `${usd(usage.cost_usd)} · ${usage.tokens_in} in / ${usage.tokens_out} out tokens · ${usage.calls} model call(s)` : null],
        ["Events", String(run.events)],
        ["Parent", run.parent ? h("span", {}, h("a", { class: "mono", href: `#/runs/${encodeURIComponent(run.parent.run_id)}`, text: run.parent.run_id }),
          ` (step ${run.parent.step})`) : null],
        ["Children", run.children && run.children.length ? h("span", {}, run.children.map((c, i) => [i ? ", " : "",
          h("a", { class: "mono", href: `#/runs/${encodeURIComponent(c.run_id)}`, text: c.run_id }), ` (${c.step}, attempt ${c.attempt})`])) : null],
      ])),
      run.failure ? h("div", { class: "error-box", id: "run-error" },
        h("strong", { text: `${run.failure.class || "error"}${run.failure.step ? ` at step ${run.failure.step}` : ""}: ` }),
        run.failure.message) : null,
      run.status === "WAITING" ? h("div", { class: "note" }, "This run waits for a person or a signal. ",
        h("a", { href: "#/approvals", text: "Open the approvals inbox" })) : null,
      run.output !== undefined ? h("details", {}, h("summary", { text: "Output" }), json(run.output)) : null);
  }

  function button(label, title, action, cls) {
    return h("button", { type: "button", class: cls, title, text: label, onclick: async (e) => {
      const b = e.currentTarget;
      b.disabled = true;
      try {
        await action();
      } catch (err) {
        toast(`${label}: ${err.message}`, true);
      } finally {
        b.disabled = false;
      }
    } });
  }

  function drawActions() {
    const run = detail;
    clear(actions);
    const steer = (what, body) => async () => {
      await post(`${base}/${what}`, body);
      toast(`${what} sent`);
      await reload();
      watch();
    };
    if (!TERMINAL.has(run.status)) {
      let armed = false;
      const cancel = h("button", { type: "button", class: "danger", text: "Cancel", onclick: async () => {
        if (!armed) {
          armed = true;
          cancel.textContent = "Click again to cancel";
          setTimeout(() => { armed = false; cancel.textContent = "Cancel"; }, 4000);
          return;
        }
        try { await steer("cancel", {})(); } catch (err) { toast(`cancel: ${err.message}`, true); }
      } });
      put(actions, cancel);
    }
    if (["EXECUTING", "WAITING", "PLANNING", "PENDING"].includes(run.status)) {
      put(actions, button("Pause", "Finish the attempts in flight, start nothing new", steer("pause", {})));
    }
    if (run.status === "PAUSED") put(actions, button("Resume", "Go on from where the run paused", steer("resume", {})));
    if (run.status === "FAILED") {
      put(actions, button("Retry", "Run the failed steps again in this run (completed steps keep their outputs)",
        steer("retry", {}), "primary"));
    }
    const steps = (run.definition && run.definition.steps) || [];
    if (steps.length) {
      const from = h("select", { "aria-label": "Rerun from step" },
        steps.map((st) => h("option", { value: st.id, text: st.id, selected: st.id === selected })));
      put(actions, h("span", { class: "row" }, "Rerun from", from, button("Rerun", "A new run reusing the results before this step", async () => {
        const forked = await post(`${base}/rerun`, { from: from.value });
        toast(`rerun started: ${forked.id}`);
        location.hash = `#/runs/${encodeURIComponent(forked.id)}`;
      })));
    }
  }

  // ---- the graph: definition steps in layers by `needs`, coloured (and named) by state

  function stateOf(stepId) {
    const rows = detail.steps.filter((r) => r.step_id === stepId || groupOf(r.step_id) === stepId);
    const own = rows.find((r) => r.step_id === stepId);
    const instances = rows.filter((r) => r.step_id !== stepId);
    return { own, instances };
  }

  function drawGraph() {
    clear(graph);
    const steps = (detail.definition && detail.definition.steps) || [];
    if (!steps.length) {
      put(graph, h("p", { class: "muted", text: "No definition yet (the run is being planned)." }));
      return;
    }
    const index = new Map(steps.map((st, i) => [st.id, i]));
    const level = new Array(steps.length).fill(0);
    for (let pass = 0; pass < steps.length; pass++) {
      let moved = false;
      steps.forEach((st, i) => {
        for (const need of st.needs || []) {
          const j = index.get(need);
          if (j !== undefined && level[i] < level[j] + 1) { level[i] = level[j] + 1; moved = true; }
        }
      });
      if (!moved) break;
    }
    const W = 170, H = 50, GX = 50, GY = 16, PAD = 8;
    const rows = [];
    const place = steps.map((st, i) => {
      const l = level[i];
      rows[l] = (rows[l] || 0) + 1;
      return { x: PAD + l * (W + GX), y: PAD + (rows[l] - 1) * (H + GY) };
    });
    const width = PAD * 2 + (Math.max(...level) + 1) * (W + GX) - GX;
    const height = PAD * 2 + Math.max(...rows.map((n) => n || 0)) * (H + GY) - GY;
    const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "The run's steps and what each needs" });
    steps.forEach((st, i) => {
      for (const need of st.needs || []) {
        const j = index.get(need);
        if (j === undefined) continue;
        const a = place[j], b = place[i];
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
        svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` }));
      }
    });
    steps.forEach((st, i) => {
      const { own, instances } = stateOf(st.id);
      const status = own ? own.status : "PENDING";
      let second = `${status} · ${st.kind}`;
      if (instances.length) {
        const counts = {};
        for (const r of instances) counts[r.status] = (counts[r.status] || 0) + 1;
        second = `${status} · ${instances.length}× ${Object.entries(counts).map(([k, n]) => `${n} ${k.toLowerCase()}`).join(", ")}`;
      }
      const { x, y } = place[i];
      const node = s("g", { class: `node s-${status}${selected === st.id ? " selected" : ""}`, tabindex: 0,
        "data-step": st.id, "data-status": status, role: "button", "aria-label": `step ${st.id}: ${second}`,
        onclick: () => select(st.id, "step"),
        onkeydown: (e) => { if (e.key === "Enter") select(st.id, "step"); } },
      s("title", { text: `${st.id} (${st.kind})${st.when ? `\nwhen: ${st.when}` : ""}\n${second}` }),
      s("rect", { x, y, width: W, height: H, rx: 5, stroke: "currentColor" }),
      s("text", { x: x + 8, y: y + 19, "font-weight": 600, text: short(st.id, 24) }),
      s("text", { x: x + 8, y: y + 37, text: short(second, 30) }));
      svg.append(node);
    });
    put(graph, svg);
  }

  // ---- the timeline: attempts, retry waits, waits and approvals, calls — from the journal

  function segments() {
    const by = new Map();
    const row = (step) => {
      if (!by.has(step)) by.set(step, []);
      return by.get(step);
    };
    const open = new Map();
    for (const e of events) {
      const step = e.step;
      switch (e.type) {
        case "attempt_started":
        case "compensation_attempt_started":
          open.set(`${e.type}:${step}:${e.attempt}`, e.at_ms);
          break;
        case "attempt_succeeded":
        case "attempt_failed":
        case "compensation_attempt_succeeded":
        case "compensation_attempt_failed": {
          const key = `${e.type.replace(/_(succeeded|failed)$/, "_started")}:${step}:${e.attempt}`;
          const from = open.get(key) ?? e.at_ms - (e.duration_ms || 0);
          open.delete(key);
          const ok = e.type.endsWith("succeeded");
          const why = e.failure ? ` · ${e.failure.class}: ${short(e.failure.message, 200)}` : "";
          row(step).push({ from, to: e.at_ms, cls: ok ? "bar-ok" : "bar-failed",
            title: `${e.type.startsWith("comp") ? "compensation " : ""}attempt ${e.attempt} ${ok ? "succeeded" : "failed"} in ${duration(e.at_ms - from)}${why}` });
          break;
        }
        case "retry_scheduled":
          row(step).push({ from: e.at_ms, to: e.not_before_ms, cls: "bar-retry",
            title: `retry wait ${duration(e.delay_ms)} before attempt ${e.next_attempt} of ${e.max_attempts}` });
          break;
        case "wait_started":
        case "approval_requested":
          open.set(`wait:${step}`, { at: e.at_ms, what: e.type === "wait_started" ? (e.signal ? `signal ${e.signal}` : "timer") : "approval" });
          break;
        case "wait_ended":
        case "wait_elapsed":
        case "approval_decided":
        case "approval_expired": {
          const w = open.get(`wait:${step}`);
          if (!w) break;
          open.delete(`wait:${step}`);
          row(step).push({ from: w.at, to: e.at_ms, cls: "bar-wait",
            title: `waited for ${w.what} ${duration(e.at_ms - w.at)}${e.decision ? ` · ${e.decision}${e.by ? ` by ${e.by}` : ""}` : ""}` });
          break;
        }
        default:
      }
    }
    const end = detail.finished_at_ms || Date.now();
    for (const [key, at] of open) {
      const [kind, step] = key.split(":");
      if (kind === "wait") row(step).push({ from: at.at, to: end, cls: "bar-wait", title: `waiting for ${at.what}` });
      else row(step).push({ from: at, to: end, cls: TERMINAL.has(detail.status) ? "bar-failed" : "bar-attempt",
        title: TERMINAL.has(detail.status) ? "attempt interrupted" : "attempt running" });
    }
    for (const c of detail.calls || []) {
      if (c.outcome === "reserved") continue;
      const step = c.step_id.replace(/\.compensate$/, "");
      const tokens = c.cost ? ` · ${c.cost.model} ${c.cost.tokens_in}/${c.cost.tokens_out} tokens ${usd(c.cost.cost_usd)}` : "";
      row(step).push({ from: c.at_ms - c.duration_ms, to: c.at_ms, cls: "bar-call", call: true,
        title: `call ${c.n} (${c.kind}) ${c.outcome} in ${duration(c.duration_ms)}${tokens}` });
    }
    return by;
  }

  function drawTimeline() {
    clear(gantt);
    const by = segments();
    const order = detail.steps.map((r) => r.step_id).filter((st) => by.has(st));
    if (!order.length) {
      put(gantt, h("p", { class: "muted", text: "Nothing has run yet." }));
      return;
    }
    const shown = order.slice(0, MAX_TIMELINE_ROWS);
    const t0 = detail.created_at_ms;
    const t1 = Math.max(detail.finished_at_ms || Date.now(), t0 + 1);
    const LABEL = 170, WIDTH = 760, ROW = 22, TOP = 22;
    const x = (t) => LABEL + Math.max(0, Math.min(1, (t - t0) / (t1 - t0))) * WIDTH;
    const height = TOP + shown.length * ROW + 6;
    const svg = s("svg", { width: LABEL + WIDTH + 10, height, role: "img", "aria-label": "Timeline of the run's attempts, waits and calls" });
    for (let k = 0; k <= 4; k++) {
      const t = t0 + ((t1 - t0) * k) / 4;
      svg.append(s("line", { class: "axis", x1: x(t), x2: x(t), y1: TOP - 4, y2: height }),
        s("text", { x: Math.min(x(t), LABEL + WIDTH - 40), y: 12, text: `+${duration(t - t0)}` }));
    }
    shown.forEach((step, i) => {
      const y = TOP + i * ROW;
      const status = (detail.steps.find((r) => r.step_id === step) || {}).status || "";
      const g = s("g", { "data-step": step, class: "gantt-row", onclick: () => select(step, "step") },
        s("text", { x: 4, y: y + 14, text: short(step, 24) }));
      g.append(s("title", { text: `${step}: ${status}` }));
      for (const seg of by.get(step)) {
        const x1 = x(seg.from), x2 = Math.max(x(seg.to), x1 + 2);
        const bar = seg.call
          ? s("rect", { class: seg.cls, x: x1, y: y + 15, width: x2 - x1, height: 4 })
          : s("rect", { class: seg.cls, x: x1, y: y + 3, width: x2 - x1, height: 12 });
        bar.append(s("title", { text: `${step}: ${seg.title}` }));
        g.append(bar);
      }
      svg.append(g);
    });
    put(gantt, svg);
    if (order.length > shown.length) put(gantt, h("p", { class: "muted", text: `… and ${order.length - shown.length} more steps` }));
  }

  // ---- a step in full, and the journal

  function drawTabs() {
    clear(tabs);
    const item = (name, label) => h("button", { type: "button", role: "tab", "aria-selected": String(tab === name),
      text: label, onclick: () => select(selected, name) });
    put(tabs, item("step", selected ? `Step ${selected}` : "Step"), item("journal", `Journal (${events.length})`));
  }

  let paneToken = 0;
  async function drawPane() {
    const mine = ++paneToken;
    if (tab === "journal") {
      put(clear(pane), journal());
      return;
    }
    if (!selected) {
      const failed = detail.failure && detail.failure.step;
      put(clear(pane), h("p", { class: "muted", text: failed
        ? "Pick a step in the graph or the timeline." : "Pick a step in the graph or the timeline to see its input, output, logs and calls." }));
      return;
    }
    try {
      const path = `${base}/steps/${encodeURIComponent(selected)}`;
      const [step, logs] = await Promise.all([get(path), get(`${path}/logs`)]);
      if (mine !== paneToken) return;
      put(clear(pane), stepView(step, logs.logs));
    } catch (e) {
      if (mine !== paneToken) return;
      put(clear(pane), h("p", { class: "muted", text: `Step ${selected}: ${e.message}` }));
    }
  }

  function stepView(detailOfStep, logs) {
    const st = detailOfStep.step;
    const spend = (detail.step_usage || {})[st.step_id];
    let turn = 0;
    const calls = detailOfStep.calls;
    return h("div", { id: "step-detail", "data-step": st.step_id },
      h("div", { class: "panel" }, facts([
        ["Step", h("span", {}, h("span", { class: "mono", text: st.step_id }), " ", badge(st.status))],
        ["Kind", st.kind],
        ["Attempts", String(st.attempts)],
        ["Started", time(st.started_at_ms)],
        ["Finished", time(st.finished_at_ms)],
        ["Busy", duration(st.busy_ms)],
        ["Skipped", st.skip_reason],
        ["Model use", spend ? `${spend.calls} call(s), ${spend.tokens_in} in / ${spend.tokens_out} out tokens, ${usd(spend.cost_usd)}` : null],
      ])),
      st.error_message ? h("div", { class: st.status === "COMPLETED" ? "note" : "error-box", id: "step-error" },
        h("strong", { text: `${st.status === "COMPLETED" ? "An earlier attempt failed — " : ""}${st.error_class || "error"}: ` }),
        st.error_message) : null,
      h("div", { class: "cols" },
        h("div", {}, h("h3", { text: "Input" }), detailOfStep.input !== undefined ? json(detailOfStep.input) : h("p", { class: "muted", text: "none yet" })),
        h("div", {}, h("h3", { text: "Output" }), detailOfStep.output !== undefined ? json(detailOfStep.output) : h("p", { class: "muted", text: "none yet" }))),
      h("h3", { text: calls.some((c) => c.kind === "llm") ? "Turns and calls" : "Calls" }),
      calls.length ? h("div", { class: "table-wrap" }, h("table", { class: "turns" },
        h("thead", {}, h("tr", {}, ["#", "Attempt", "Kind", "Outcome", "Duration", "Tokens", "Cost", "Answer"].map((t) => h("th", { text: t })))),
        h("tbody", {}, calls.map((c) => {
          const label = c.kind === "llm" ? `turn ${++turn}` : c.kind;
          return h("tr", { "data-call": c.n },
            h("td", { class: "num", text: String(c.n) }), h("td", { class: "num", text: String(c.attempt) }),
            h("td", { text: label }), h("td", {}, h("span", { class: `badge s-${{ ok: "COMPLETED", failed: "FAILED" }[c.outcome] || "RUNNING"}`, text: c.outcome })),
            h("td", { class: "num", text: duration(c.duration_ms) }),
            h("td", { class: "num", text: c.cost ? `${c.cost.tokens_in}/${c.cost.tokens_out}` : "" }),
            h("td", { class: "num", text: c.cost ? usd(c.cost.cost_usd) : "" }),
            h("td", {}, c.answer || c.error || ""));
        })))) : h("p", { class: "muted", text: "No journaled calls." }),
      h("h3", { text: "Logs" }),
      logs.length ? h("pre", { id: "step-logs", text: logs.map((l) => `${time(l.at_ms)} #${l.attempt} ${l.level} ${l.message}`).join("\n") })
        : h("p", { class: "muted", text: "No log lines." }));
  }

  function journal() {
    return h("div", { class: "table-wrap" }, h("table", { id: "journal" },
      h("thead", {}, h("tr", {}, ["Seq", "Time", "Event", "Step", "Details"].map((t) => h("th", { text: t })))),
      h("tbody", {}, events.map((e) => {
        const { seq, at_ms: at, type, step, schema, ...rest } = e;
        void schema;
        return h("tr", {}, h("td", { class: "num", text: String(seq) }), h("td", { text: time(at) }),
          h("td", { class: "mono", text: type }), h("td", { class: "mono", text: step || "" }),
          h("td", { class: "mono", text: Object.keys(rest).length ? short(rest, 300) : "" }));
      }))));
  }

  // ---- loading, live

  let loading = false;
  let again = false;
  async function reload(pane = true) {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const after = events.length ? events[events.length - 1].seq : null;
      const [run, more] = await Promise.all([get(base), get(`${base}/events${after !== null ? `?after=${after}` : ""}`)]);
      detail = run;
      events = events.concat(more.events);
      if (!selected && detail.failure && detail.failure.step) selected = detail.failure.step;
      drawHead();
      drawActions();
      drawGraph();
      drawTimeline();
      drawTabs();
      if (pane) drawPane();
    } catch (e) {
      if (e.status !== 401) {
        put(clear(head), h("h1", { text: `Run ${id}` }), h("div", { class: "error-box", text: e.message }));
      }
    } finally {
      loading = false;
      if (again) { again = false; reload(); }
    }
  }

  let pending = null;
  let paneToo = false;
  function watch() {
    if (following || stop.signal.aborted) return;
    const mine = new AbortController();
    following = mine;
    stop.signal.addEventListener("abort", () => mine.abort());
    follow(`${base}/events/stream`, (event) => {
      if (event.event.startsWith("llm.")) return;
      // The step pane is read again only for its own step's events (or the run's).
      let step = null;
      try { step = JSON.parse(event.data).step || null; } catch { /* no step */ }
      paneToo = paneToo || !step || step === selected || tab === "journal";
      if (/approval|run_waiting|run_resumed/.test(event.event)) window.dispatchEvent(new Event("cairn:changed"));
      if (pending) return;
      pending = setTimeout(() => { pending = null; const pane = paneToo; paneToo = false; reload(pane); }, 250);
    }, () => {}, mine.signal, () => { if (following === mine) following = null; });
  }

  reload().then(watch);
  // Durations of unfinished work grow while nothing is committed; a finished run is looked at
  // now and then (another client may retry it), and followed again if it runs.
  let idle = 0;
  const tick = setInterval(() => {
    if (!detail) return;
    if (!TERMINAL.has(detail.status)) { drawHead(); drawTimeline(); return; }
    idle += 1;
    if (idle % 3 === 0) reload(false).then(() => { if (detail && !TERMINAL.has(detail.status)) watch(); });
  }, 5000);
  return () => { stop.abort(); clearTimeout(pending); clearInterval(tick); };
}
