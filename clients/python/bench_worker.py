"""The Python side of `cairn bench --external --external-client python`: a worker that completes
every task of kind `work` on queue `bench` at once. Usage: bench_worker.py URL NAME."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from cairn import TaskContext, Worker  # noqa: E402

worker = Worker(sys.argv[1], queues=["bench"], name=sys.argv[2], concurrency=16, poll_ms=1000)


@worker.kind("work")
def work(ctx: TaskContext, input: Any) -> Any:
    return {"n": input["n"]}


if __name__ == "__main__":
    worker.run()
