"""A worker: runs your functions as the steps of external kinds.

    worker = Worker("http://127.0.0.1:8080", queues=["py-workers"])

    @worker.kind("summarize")
    def summarize(ctx: TaskContext, input: dict) -> dict:
        page = ctx.call("fetch", fetch_page, input["url"])   # durable: made once per step
        return {"summary": page[:100]}

    worker.run()

Each task is one attempt of a step. The worker claims tasks of its queues (a long poll), runs
each in a thread of its pool, heartbeats while it runs, and reports the return value (the step's
output) or the exception (its failure). A worker killed mid-task loses its lease; the engine
tries the step again, and the new attempt's `ctx.call`s that the killed one finished come back
from the record instead of being made again.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, TypeVar

from ._http import CairnError, Http

log = logging.getLogger("cairn.worker")

T = TypeVar("T")
KindFn = Callable[["TaskContext", Any], Any]


class TaskFailed(Exception):
    """Raise to fail the attempt with a class: `transient` (the default for any exception),
    `timeout` and `rate_limited` are retried under the step's policy; `permanent` and
    `malformed_output` are not. `retry_after_ms` asks the next attempt to wait at least so long."""

    CLASSES = ("transient", "timeout", "rate_limited", "permanent", "malformed_output")

    def __init__(self, message: str, cls: str = "transient", retry_after_ms: Optional[int] = None) -> None:
        if cls not in self.CLASSES:
            raise ValueError(f"failure class {cls!r} is not one of {', '.join(self.CLASSES)}")
        super().__init__(message)
        self.cls = cls
        self.retry_after_ms = retry_after_ms


class Permanent(TaskFailed):
    """A failure retrying cannot fix (bad input): the step fails without another attempt."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "permanent")


class Cancelled(Exception):
    """Raised by `TaskContext.call` and `TaskContext.check` once the task was cancelled."""


def request_hash(name: str, args: Any, kwargs: Any) -> str:
    """The hash a durable call is recorded under: SHA-256 of its name and arguments as canonical
    JSON. Arguments must be JSON (a `TypeError` otherwise): anything else has no representation
    that is the same in every process."""
    text = json.dumps([name, args, kwargs], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class TaskContext:
    """What a task's function can see and do."""

    def __init__(self, http: Http, task: Dict[str, Any]) -> None:
        self._http = http
        self.token: str = task["token"]
        self.run_id: str = task["run_id"]
        self.step: str = task["step"]
        self.attempt: int = task["attempt"]
        self.kind: str = task["kind"]
        self.deadline_ms: Optional[int] = task.get("deadline_ms")
        self._cancelled = threading.Event()
        self._next_call = 0

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled, the attempt superseded, or the lease lost: stop."""
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raises `Cancelled` if the task was cancelled (call it in long loops)."""
        if self._cancelled.is_set():
            raise Cancelled(f"task of step {self.step} was cancelled")

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Makes `fn(*args, **kwargs)` a durable call: if an earlier attempt of this step
        recorded a call at this position (the n-th `ctx.call` of the task) with the same name
        and arguments, its result comes back and `fn` is not called; otherwise `fn` runs and its
        result (which must be JSON) is recorded before it is returned. Calls must come in the
        same order in every attempt."""
        self.check()
        self._next_call += 1
        body: Dict[str, Any] = {
            "token": self.token,
            "n": self._next_call,
            "name": name,
            "request_hash": request_hash(name, list(args), kwargs),
        }
        found = self._post_call(body)
        if found["recorded"]:
            log.info("call %d (%s) of step %s came back from the record", self._next_call, name, self.step)
            return found["result"]  # type: ignore[no-any-return]
        result = fn(*args, **kwargs)
        body["result"] = json.loads(json.dumps(result, default=str))
        return self._post_call(body)["result"]  # type: ignore[no-any-return]

    def _post_call(self, body: Dict[str, Any]) -> Dict[str, Any]:
        try:
            answer: Dict[str, Any] = self._http.post("/v1/workers/calls", body)
            return answer
        except CairnError as e:
            if e.code == "stale_token":
                self._cancelled.set()
                raise Cancelled(e.message) from None
            if e.code == "call_divergence":
                # The code or its input changed since the call was recorded: retrying cannot help.
                raise TaskFailed(e.message, "permanent") from None
            raise


class Worker:
    """Claims tasks of `queues` (and of the kinds registered, only) and runs them."""

    def __init__(
        self,
        url: str,
        queues: List[str],
        token: Optional[str] = None,
        name: Optional[str] = None,
        concurrency: int = 4,
        lease_ms: int = 30_000,
        poll_ms: int = 20_000,
    ) -> None:
        self.http = Http(url, token)
        self.queues = list(queues)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = max(1, concurrency)
        self.lease_ms = lease_ms
        self.poll_ms = poll_ms
        self.kinds: Dict[str, KindFn] = {}
        self._stop = threading.Event()
        self._busy = threading.Semaphore(self.concurrency)

    def kind(self, name: str) -> Callable[[KindFn], KindFn]:
        """Registers a function (plain or `async def`) as the code of external kind `name`: it is
        called with the task's context and the step's input, and returns the step's output."""

        def register(fn: KindFn) -> KindFn:
            self.kinds[name] = fn
            return fn

        return register

    def stop(self) -> None:
        """Stops claiming (after the claim waiting now, at most `poll_ms`); tasks running now
        finish."""
        self._stop.set()

    def run(self) -> None:
        """Claims and runs tasks until `stop()` (or Ctrl-C)."""
        if not self.kinds:
            raise ValueError("register at least one kind with @worker.kind(NAME) before run()")
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="cairn-task")
        backoff = 0.1
        try:
            while not self._stop.is_set():
                self._busy.acquire()
                free = 1
                while free < self.concurrency and self._busy.acquire(blocking=False):
                    free += 1
                try:
                    tasks = self._claim(free)
                    backoff = 0.1
                except Exception as e:  # noqa: BLE001 - a proxy's page, a cut connection: try again
                    log.warning("claim failed (%s); retrying in %.1fs", e, backoff)
                    tasks = []
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                for _ in range(free - len(tasks)):
                    self._busy.release()
                for task in tasks:
                    pool.submit(self._run_task, task)
        finally:
            pool.shutdown(wait=True)

    def _claim(self, limit: int) -> List[Dict[str, Any]]:
        body = {
            "worker": self.name,
            "queues": self.queues,
            "kinds": sorted(self.kinds),
            "max_tasks": limit,
            "wait_ms": self.poll_ms,
            "lease_ms": self.lease_ms,
        }
        answer = self.http.post("/v1/workers/claim", body, timeout=self.poll_ms / 1000 + 30)
        return list(answer["tasks"])

    def _run_task(self, task: Dict[str, Any]) -> None:
        ctx = TaskContext(self.http, task)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ctx, done), daemon=True)
        beat.start()
        try:
            fn = self.kinds[task["kind"]]
            try:
                if inspect.iscoroutinefunction(fn):
                    output = asyncio.run(fn(ctx, task["input"]))
                else:
                    output = fn(ctx, task["input"])
            except Cancelled:
                log.info("task of step %s was cancelled", ctx.step)
                return
            except TaskFailed as e:
                self._settle("/v1/workers/fail", ctx, {"class": e.cls, "message": str(e)[:4000], "retry_after_ms": e.retry_after_ms})
                return
            except Exception as e:  # noqa: BLE001 - any exception fails the attempt (transient)
                log.exception("step %s attempt %d failed", ctx.step, ctx.attempt)
                self._settle("/v1/workers/fail", ctx, {"class": "transient", "message": f"{type(e).__name__}: {e}"[:4000]})
                return
            if not ctx.cancelled:
                self._settle("/v1/workers/complete", ctx, {"output": json.loads(json.dumps(output, default=str))})
        finally:
            done.set()
            self._busy.release()

    def _settle(self, path: str, ctx: TaskContext, body: Dict[str, Any]) -> None:
        body = {k: v for k, v in body.items() if v is not None}
        body["token"] = ctx.token
        for n, wait in enumerate((0.0, 0.5, 1.0, 2.0, 4.0, 8.0)):
            time.sleep(wait)
            try:
                self.http.post(path, body)
                return
            except CairnError as e:
                if e.status == 409 and n > 0 and e.details and e.details.get("state") in ("done", "failed"):
                    return  # an earlier try was taken; its answer was lost on the way
                if e.status < 500:
                    log.warning("step %s: %s was refused: %s", ctx.step, path, e)
                    return
                log.warning("step %s: %s failed (%s); retrying", ctx.step, path, e)
            except Exception as e:  # noqa: BLE001 - the answer was lost: try again
                log.warning("step %s: %s failed (%s); retrying", ctx.step, path, e)
        log.error("step %s: gave up reporting its result; the attempt is retried when its lease lapses", ctx.step)

    def _heartbeat(self, ctx: TaskContext, done: threading.Event) -> None:
        every = max(self.lease_ms / 3000, 0.2)
        while not done.wait(every):
            try:
                answer = self.http.post(
                    "/v1/workers/heartbeat", {"token": ctx.token, "lease_ms": self.lease_ms}, timeout=every
                )
            except Exception as e:  # noqa: BLE001 - the next beat may get through
                log.warning("heartbeat for step %s failed: %s", ctx.step, e)
                continue
            if answer.get("cancelled"):
                ctx._cancelled.set()
                return
