// The approvals inbox, oldest first: approve, reject with a reason, approve a tool call with
// edited arguments (checked to be a JSON object before it is sent), or answer an escalation.

import { get, post, follow } from "./api.js";
import { h, put, time, duration, toast } from "./dom.js";

export function approvalsPage(main) {
  const stop = new AbortController();
  const list = h("div", { id: "approvals" });
  const live = h("span", { class: "live", text: "live" });
  put(main, h("div", { class: "row" }, h("h1", { class: "grow", text: "Approvals" }), live), list);

  async function decide(item, body) {
    // Names the request it answers: if the step asked again meanwhile, the server refuses it.
    await post(item.decide, { ...body, requested_at_ms: item.requested_at_ms });
    toast(`${body.decision}: ${item.step} of ${item.run_id}`);
    window.dispatchEvent(new Event("cairn:changed"));
    await load();
  }

  function card(item) {
    const reason = h("input", { type: "text", placeholder: "reason (recorded with the decision)", class: "grow",
      "aria-label": "Reason" });
    const problem = h("div", { class: "error-box", hidden: true });
    const act = (label, cls, body) => h("button", { type: "button", class: cls, text: label, onclick: async (e) => {
      e.currentTarget.disabled = true;
      try {
        await decide(item, body());
      } catch (err) {
        problem.hidden = false;
        problem.textContent = err.message;
        e.currentTarget.disabled = false;
      }
    } });
    const comment = () => (reason.value.trim() ? { comment: reason.value.trim() } : {});
    const buttons = h("div", { class: "row" }, reason);
    let args = null;
    if (item.kind === "approval") {
      buttons.append(act("Approve", "primary", () => ({ decision: "approve", ...comment() })),
        act("Reject", "danger", () => {
          if (!reason.value.trim()) throw new Error("say why in the reason box: the reason goes back to the run");
          return { decision: "reject", ...comment() };
        }));
    } else {
      for (const d of item.decisions) {
        if (d === "skip") continue;
        buttons.append(act(d[0].toUpperCase() + d.slice(1), d === "abort" ? "danger" : "", () => ({ decision: d, ...comment() })));
      }
    }
    if (item.call) {
      args = h("textarea", { rows: 6, spellcheck: "false", "aria-label": "Arguments" });
      args.value = JSON.stringify(item.call.args, null, 2);
      const check = () => {
        try {
          const value = JSON.parse(args.value);
          if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("the arguments must be a JSON object");
          problem.hidden = true;
          return value;
        } catch (err) {
          problem.hidden = false;
          problem.textContent = `Arguments: ${err.message}`;
          throw new Error(`arguments are not valid: ${err.message}`);
        }
      };
      args.addEventListener("input", () => { try { check(); } catch { /* shown */ } });
      buttons.append(act("Approve with these arguments", "", () => ({ decision: "approve", args: check(), ...comment() })));
    }
    const waited = Date.now() - item.requested_at_ms;
    return h("div", { class: "panel approval", "data-run": item.run_id, "data-step": item.step },
      h("div", { class: "row" },
        h("strong", { class: "grow" }, `${item.kind === "approval" ? "Approve" : "Escalated"}: `,
          h("span", { class: "mono", text: item.step }), " of ",
          h("a", { class: "mono", href: `#/runs/${encodeURIComponent(item.run_id)}`, text: item.run_id }),
          ` (${item.workflow})`),
        h("span", { class: "muted", text: `waiting ${duration(waited)} · since ${time(item.requested_at_ms)}` })),
      h("div", { text: item.prompt }),
      item.deadline_ms ? h("div", { class: "muted", text: `deadline ${time(item.deadline_ms)}` }) : null,
      item.approvers && item.approvers.length ? h("div", { class: "muted", text: `approvers: ${item.approvers.join(", ")}` }) : null,
      item.call ? h("div", {}, h("div", {}, `Tool call ${item.call.call}: `, h("span", { class: "mono", text: item.call.tool }),
        ` (${item.call.effect}) — ${item.call.reason}`), args) : null,
      problem, buttons);
  }

  // Cards are kept by what they ask (run, step, when, which call): a refresh adds new ones and
  // drops answered ones, and never resets a card someone is editing.
  const cards = new Map();
  const keyOf = (item) => `${item.run_id}|${item.step}|${item.requested_at_ms}|${item.call ? item.call.call : ""}`;
  const empty = h("p", { class: "muted", text: "Nothing waits for a person." });
  async function load() {
    try {
      const { approvals } = await get("/v1/approvals");
      approvals.sort((a, b) => a.requested_at_ms - b.requested_at_ms);
      const keys = new Set(approvals.map(keyOf));
      for (const [key, el] of cards) {
        if (!keys.has(key)) { el.remove(); cards.delete(key); }
      }
      for (const item of approvals) {
        const key = keyOf(item);
        // New requests are newer than those shown: they go last, and shown cards stay put.
        if (!cards.has(key)) {
          const el = card(item);
          cards.set(key, el);
          list.append(el);
        }
      }
      if (approvals.length) empty.remove(); else list.append(empty);
    } catch (e) {
      if (e.status !== 401) toast(`approvals: ${e.message}`, true);
    }
  }

  let pending = null;
  follow("/v1/events/stream", (event) => {
    if (!/approval|run_waiting|run_resumed|run_(completed|failed|cancelled)/.test(event.event) || pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 250);
  }, (on) => live.classList.toggle("on", on), stop.signal);
  load();
  return () => { stop.abort(); clearTimeout(pending); };
}
