// Talking to Cairn's REST API: the bearer token (kept for this tab only), JSON errors, and event
// streams read with fetch (EventSource cannot send an Authorization header).

const KEY = "cairn.token";

export const auth = {
  get token() { return sessionStorage.getItem(KEY); },
  set token(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  if (auth.token) h.Authorization = `Bearer ${auth.token}`;
  return h;
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const e = body && body.error;
  const error = new ApiError(response.status, e ? e.code : "http_error",
    e ? e.message : `${response.status} ${response.statusText}`, e ? e.details : null);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("cairn:unauthorized", { detail: error }));
  return error;
}

export async function get(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body === undefined ? {} : body),
  });
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Follows a Server-Sent Events stream until `signal` aborts, reconnecting (from the last id
// received) when the connection drops. `onEvent({id, event, data})` gets each event, `onState`
// true while connected. With `onEnd`, a stream the server ends (a run's, once the run finished)
// is not reopened: `onEnd()` is called instead.
export function follow(path, onEvent, onState, signal, onEnd) {
  let last = null;
  let delay = 500;
  const run = async () => {
    while (!signal.aborted) {
      try {
        const extra = { Accept: "text/event-stream" };
        if (last !== null) extra["Last-Event-ID"] = last;
        const response = await fetch(path, { headers: headers(extra), signal });
        if (!response.ok) throw await failure(response);
        onState(true);
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
            const event = { id: null, event: "message", data: "" };
            const data = [];
            for (const line of block.split(/\r?\n/)) {
              if (line.startsWith(":")) continue;
              const at = line.indexOf(":");
              const field = at < 0 ? line : line.slice(0, at);
              const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
              if (field === "id") event.id = text;
              else if (field === "event") event.event = text;
              else if (field === "data") data.push(text);
            }
            if (data.length === 0) continue;
            event.data = data.join("\n");
            if (event.id !== null) last = event.id;
            try { onEvent(event); } catch (e) { console.warn("stream handler", e); }
          }
        }
        if (onEnd) {
          onState(false);
          onEnd();
          return;
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 404)) {
          onState(false);
          return;
        }
      }
      onState(false);
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  };
  run();
}
