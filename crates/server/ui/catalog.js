// What the server knows: registered workflows (with a definition viewer), configured models with
// their breakers, and tools.

import { get } from "./api.js";
import { h, put, clear, time, json, toast, badge } from "./dom.js";

export function workflowsPage(main) {
  const body = h("tbody");
  put(main, h("h1", { text: "Workflows" }), h("div", { class: "table-wrap" }, h("table", { id: "workflows" },
    h("thead", {}, h("tr", {}, ["Workflow", "Latest", "Versions", "Registered", "Runs"].map((t) => h("th", { text: t })))),
    body)));
  get("/v1/workflows").then(({ workflows }) => {
    if (!workflows.length) {
      put(body, h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No workflow is registered (cairn workflows register FILE)." })));
    }
    for (const w of workflows) {
      const name = encodeURIComponent(w.name);
      put(body, h("tr", {},
        h("td", {}, h("a", { href: `#/workflows/${name}`, text: w.name })),
        h("td", { text: w.latest ? `v${w.latest}` : "" }),
        h("td", {}, w.versions.map((v, i) => [i ? " " : "", h("a", { href: `#/workflows/${name}?version=${v.version}`, text: `v${v.version}` })])),
        h("td", { text: w.versions.length ? time(w.versions[0].created_at_ms) : "" }),
        h("td", {}, h("a", { href: `#/runs?workflow=${name}`, text: "runs" }))));
    }
  }).catch((e) => { if (e.status !== 401) toast(`workflows: ${e.message}`, true); });
}

export function workflowPage(main, name, params) {
  const version = params.get("version");
  const box = h("div");
  put(main, h("p", {}, h("a", { href: "#/workflows", text: "← Workflows" })), box);
  get(`/v1/workflows/${encodeURIComponent(name)}${version ? `?version=${encodeURIComponent(version)}` : ""}`).then((w) => {
    const steps = w.definition.steps || [];
    put(clear(box), 
      h("h1", {}, w.name, h("span", { class: "muted", text: ` v${w.version}` })),
      h("div", { class: "row" }, "Versions: ", w.versions.map((v) => h("a", {
        href: `#/workflows/${encodeURIComponent(w.name)}?version=${v}`, text: `v${v}`,
        "aria-current": v === w.version ? "page" : null }))),
      h("p", {}, `Registered ${time(w.created_at_ms)} · `, h("a", { href: `#/runs?workflow=${encodeURIComponent(w.name)}`, text: "its runs" })),
      h("h2", { text: "Steps" }),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Step", "Kind", "Needs", "When", "Retry", "Timeout"].map((t) => h("th", { text: t })))),
        h("tbody", {}, steps.map((st) => h("tr", {},
          h("td", { class: "mono", text: st.id }), h("td", { text: st.kind }),
          h("td", { class: "mono", text: (st.needs || []).join(", ") }), h("td", { class: "mono", text: st.when || "" }),
          h("td", { text: st.retry ? `${st.retry.max_attempts} attempt(s)` : "" }),
          h("td", { text: st.timeout_ms ? `${st.timeout_ms} ms` : "" })))))),
      h("h2", { text: "Definition" }), json(w.definition));
  }).catch((e) => { if (e.status !== 401) put(clear(box), h("div", { class: "error-box", text: e.message })); });
}

export function modelsPage(main) {
  const models = h("div", { id: "models" });
  const tools = h("div", { id: "tools" });
  put(main, h("h1", { text: "Models & tools" }), h("h2", { text: "Model providers" }), models, h("h2", { text: "Tools" }), tools);
  get("/v1/providers").then((p) => {
    if (!p.providers.length) {
      put(models, h("p", { class: "muted", text: "No model provider is configured ([providers.NAME] in cairn.toml)." }));
      return;
    }
    put(models, p.default_model ? h("p", {}, "Default model: ", h("span", { class: "mono", text: p.default_model })) : null,
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Provider", "Type", "Base URL", "Key", "Models", "Breaker", "Recent"].map((t) => h("th", { text: t })))),
        h("tbody", {}, p.providers.map((x) => {
          const b = x.breaker;
          const state = { closed: "COMPLETED", open: "FAILED", half_open: "WAITING" }[b.state] || "PENDING";
          return h("tr", { "data-provider": x.name },
            h("td", { class: "mono", text: x.name }), h("td", { text: x.kind }), h("td", { class: "mono", text: x.base_url }),
            h("td", { text: x.api_key_env ? `${x.api_key_env} ${x.key_set ? "(set)" : "(NOT set)"}` : "none" }),
            h("td", { class: "mono", text: x.models.join(", ") }),
            h("td", {}, h("span", { class: `badge s-${state}`, text: `breaker ${b.state}` }),
              b.reason ? h("div", { class: "muted", text: b.reason }) : null,
              b.retry_in_ms ? h("div", { class: "muted", text: `retry in ${Math.round(b.retry_in_ms / 1000)} s` }) : null),
            h("td", { text: `${b.recent_failures} failed of ${b.recent_calls}; ${b.consecutive_failures} in a row` }));
        })))));
  }).catch((e) => { if (e.status !== 401) toast(`providers: ${e.message}`, true); });
  get("/v1/tools").then((t) => {
    if (!t.tools.length) put(tools, h("p", { class: "muted", text: "No tool is configured ([tools.NAME] in cairn.toml)." }));
    else {
      put(tools, h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Tool", "Kind", "Effect", "Approval", "Description", "Input"].map((x) => h("th", { text: x })))),
        h("tbody", {}, t.tools.map((x) => h("tr", { "data-tool": x.name },
          h("td", { class: "mono", text: x.name }), h("td", { text: `${x.kind} (${x.source})` }),
          h("td", {}, x.effect, x.effect_note ? h("div", { class: "muted", text: x.effect_note }) : null),
          h("td", { text: x.approval }), h("td", { text: x.description }),
          h("td", {}, h("details", {}, h("summary", { text: "schema" }), json(x.input_schema)))))))));
    }
    const down = Object.entries(t.unavailable || {});
    if (down.length) {
      put(tools, h("h3", { text: "Unavailable" }), h("ul", {}, down.map(([name, why]) =>
        h("li", {}, badge("FAILED"), " ", h("span", { class: "mono", text: name }), `: ${why}`))));
    }
  }).catch((e) => { if (e.status !== 401) toast(`tools: ${e.message}`, true); });
}
