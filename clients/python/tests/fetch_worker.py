"""A worker process for the SIGKILL test: kind `fetch_two` fetches two pages through durable calls
and, when told to (HOLD=1), hangs after the second so the test can kill it there."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from cairn import TaskContext, Worker  # noqa: E402


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


worker = Worker(sys.argv[1], queues=["fetchers"], lease_ms=1500, poll_ms=1000, name=f"fetcher-{os.getpid()}")


@worker.kind("fetch_two")
def fetch_two(ctx: TaskContext, input: Any) -> Any:
    first = ctx.call("fetch", fetch, input["base"] + "/one")
    second = ctx.call("fetch", fetch, input["base"] + "/two")
    if os.environ.get("HOLD") == "1":
        print("holding", flush=True)
        time.sleep(3600)
    return {"pages": [first["path"], second["path"]], "attempt": ctx.attempt}


if __name__ == "__main__":
    print("ready", flush=True)
    worker.run()
