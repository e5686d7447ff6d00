"""Seeds a scratch `cairn serve` with runs in every state the API can steer, then prints a
schemathesis config whose dictionaries hold their ids, so generated requests reach real runs,
steps, workflows and tokens instead of answering 404 to everything.

Usage: python3 .ci/schemathesis_setup.py http://127.0.0.1:PORT > schemathesis.toml
"""

import json
import sys
import time
import urllib.error
import urllib.request

BASE = sys.argv[1].rstrip("/")


def call(method, path, body=None, content_type="application/json"):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def expect(result, *statuses):
    status, body = result
    if status not in statuses:
        sys.exit(f"schemathesis setup: expected {statuses}, got {status}: {body}")
    return body


def wait_for(run_id, done):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        view = expect(call("GET", f"/v1/runs/{run_id}"), 200)
        if done(view):
            return view
        time.sleep(0.05)
    sys.exit(f"schemathesis setup: run {run_id} never got there: {view}")


def start(body, query=""):
    return expect(call("POST", "/v1/runs" + query, body), 201)["id"]


gated = {"name": "gated", "steps": [
    {"id": "draft", "kind": "echo", "with": {"text": "hi"}},
    {"id": "review", "kind": "noop", "needs": ["draft"], "approval": {"prompt": "ship it?"}},
]}
waits = {"name": "waits", "steps": [{"id": "flaky", "kind": "noop", "inject": {"fail_times": 1},
                                     "retry": {"initial_delay": "1h", "max_delay": "1h", "jitter": 0}}]}
fails = {"name": "fails", "steps": [{"id": "broken", "kind": "fail", "retry": {"max_attempts": 1}}]}
for definition in (gated, waits, fails):
    expect(call("POST", "/v1/workflows", definition), 201, 200)
yaml = b"name: greeting\nsteps:\n  - id: greet\n    kind: echo\n    with: {text: hi}\n"
expect(call("POST", "/v1/workflows", yaml, "application/yaml"), 201, 200)

completed = expect(call("POST", "/v1/runs?wait=10s", {"goal": "generate summary and send email"}), 201)["id"]
wait_for(completed, lambda v: v["status"] == "COMPLETED")
runs = [completed]
for _ in range(3):
    gate = start({"workflow": "gated"})
    wait_for(gate, lambda v: v["status"] == "WAITING")
    timer = start({"workflow": "waits"})
    wait_for(timer, lambda v: v["status"] == "WAITING")
    failed = start({"workflow": "fails"})
    wait_for(failed, lambda v: v["status"] == "FAILED")
    runs += [gate, timer, failed]
tokens = [expect(call("POST", "/v1/tokens", {"name": f"fuzz-{i}", "role": "viewer"}), 201)["id"] for i in range(3)]


def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


print(f"""# Written by .ci/schemathesis_setup.py for one run against {BASE}.
request-timeout = 10

[dictionaries.runs]
values = {toml_list(runs)}

[dictionaries.steps]
values = {toml_list(["draft", "review", "flaky", "broken", "generate_summary", "send_email"])}

[dictionaries.workflows]
values = {toml_list(["gated", "waits", "fails", "greeting"])}

[dictionaries.tokens]
values = {toml_list(tokens + ["fuzz-0", "fuzz-1"])}

[dictionaries.signals]
values = {toml_list(["go", "approved_budget"])}

[parameters]
"path.id" = {{ dictionary = "runs", probability = 0.7 }}
"path.step" = {{ dictionary = "steps", probability = 0.7 }}

[[operations]]
include-path = "/v1/tokens/{{id}}/revoke"
parameters = {{ "path.id" = {{ dictionary = "tokens", probability = 0.7 }} }}

[[operations]]
include-path = "/v1/workflows/{{name}}"
parameters = {{ "path.name" = {{ dictionary = "workflows", probability = 0.7 }} }}

[[operations]]
include-path = "/v1/runs/{{id}}/signals/{{name}}"
parameters = {{ "path.id" = {{ dictionary = "runs", probability = 0.7 }}, "path.name" = {{ dictionary = "signals", probability = 0.5 }} }}

# A claim is a long poll of up to a minute (`wait_ms`): generated values would hold requests for
# minutes. Its answers are fuzzed against the document by the server's own conformance test
# (crates/server/tests/conformance.rs), which keeps its waits short; the other worker routes are
# fuzzed here.
[[operations]]
include-path = "/v1/workers/claim"
enabled = false

# The stream of every run does not end: read it for a second, a few times.
[[operations]]
include-path = "/v1/events/stream"
request-timeout = 1
max-stream-events = 5
generation.max-examples = 5
""")
