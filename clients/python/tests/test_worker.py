"""The Python client against a real `cairn serve`: workers on two queues, a worker killed with
SIGKILL mid-task (the attempt is retried and its finished durable calls are not made again),
cancellation seen by the running function, failures with classes, and approvals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from cairn import CairnError, Client, Permanent, TaskContext, Worker

from counting_service import Counting

HERE = os.path.dirname(__file__)


def until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def running(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_two_workers_on_two_queues_each_run_their_own_kind(server: Any) -> None:
    seen: Dict[str, List[str]] = {"a": [], "b": []}
    a = Worker(server.url, queues=["py-a"], poll_ms=500, name="worker-a")
    b = Worker(server.url, queues=["py-b"], poll_ms=500, name="worker-b", concurrency=2)

    @a.kind("summarize")
    def summarize(ctx: TaskContext, input: Any) -> Any:
        seen["a"].append(ctx.step)
        return {"summary": input["text"][:12]}

    @b.kind("shout")
    async def shout(ctx: TaskContext, input: Any) -> Any:
        seen["b"].append(ctx.step)
        return {"text": input["text"].upper()}

    threads = [running(a), running(b)]
    client = Client(server.url)
    definition = {
        "name": "two-queues",
        "kinds": {"summarize": {"queue": "py-a"}, "shout": {"queue": "py-b", "effect": "pure"}},
        "steps": [
            {"id": "sum", "kind": "summarize", "with": {"text": "{{ inputs.text }}"}},
            {"id": "loud1", "kind": "shout", "needs": ["sum"], "with": {"text": "{{ steps.sum.output.summary }}"}},
            {"id": "loud2", "kind": "shout", "needs": ["sum"], "with": {"text": "second"}},
        ],
        "inputs": {"text": {}},
    }
    run_ids = [client.start(definition, {"text": f"otters hold hands {i}"}) for i in range(3)]
    for run_id in run_ids:
        run = client.wait(run_id, timeout=30)
        assert run["status"] == "COMPLETED", run
        assert run["output"]["loud1"] == {"text": "OTTERS HOLD "}
    assert sorted(seen["a"]) == ["sum"] * 3
    assert sorted(seen["b"]) == ["loud1"] * 3 + ["loud2"] * 3
    a.stop()
    b.stop()
    for t in threads:
        t.join(timeout=5)


def test_a_worker_killed_mid_task_is_retried_and_its_durable_calls_are_not_repeated(server: Any) -> None:
    pages = Counting()
    client = Client(server.url)
    definition = {
        "name": "fetch",
        "kinds": {"fetch_two": {"queue": "fetchers", "retry": {"max_attempts": 3, "initial_delay": "100ms"}}},
        "steps": [{"id": "fetch", "kind": "fetch_two", "with": {"base": pages.url}}],
    }
    script = os.path.join(HERE, "fetch_worker.py")
    first = subprocess.Popen(
        [sys.executable, script, server.url], env=dict(os.environ, HOLD="1"), stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = client.start(definition)
        assert first.stdout is not None
        for line in first.stdout:
            if line.strip() == "holding":
                break
        assert pages.counts == {"/one": 1, "/two": 1}
        # Both calls are recorded; the worker dies before it reports the result.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = subprocess.Popen([sys.executable, script, server.url], stdout=subprocess.DEVNULL)
        try:
            run = client.wait(run_id, timeout=30)
        finally:
            second.kill()
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        pages.close()
    assert run["status"] == "COMPLETED", run
    assert run["output"]["fetch"] == {"pages": ["/one", "/two"], "attempt": 2}
    assert pages.counts == {"/one": 1, "/two": 1}, "a call the killed attempt finished was made again"
    step = run["steps"][0]
    assert step["attempts"] == 2


def test_a_cancelled_run_reaches_the_running_function(server: Any) -> None:
    stopped = threading.Event()
    started = threading.Event()
    worker = Worker(server.url, queues=["slow"], lease_ms=1500, poll_ms=500)

    @worker.kind("spin")
    def spin(ctx: TaskContext, input: Any) -> Any:
        started.set()
        while not ctx.cancelled:
            time.sleep(0.05)
        stopped.set()
        return None

    thread = running(worker)
    client = Client(server.url)
    run_id = client.start({"name": "spin", "kinds": {"spin": {"queue": "slow"}}, "steps": [{"id": "s", "kind": "spin"}]})
    assert started.wait(20)
    client.cancel(run_id, reason="enough")
    assert stopped.wait(10), "the function never saw the cancellation"
    assert client.wait(run_id)["status"] == "CANCELLED"
    worker.stop()
    thread.join(timeout=5)


def test_failures_keep_their_class_and_transient_ones_are_retried(server: Any) -> None:
    calls = {"flaky": 0}
    worker = Worker(server.url, queues=["f"], poll_ms=500)

    @worker.kind("flaky")
    def flaky(ctx: TaskContext, input: Any) -> Any:
        calls["flaky"] += 1
        if ctx.attempt == 1:
            raise ConnectionError("upstream reset")
        return {"ok": ctx.attempt}

    @worker.kind("picky")
    def picky(ctx: TaskContext, input: Any) -> Any:
        raise Permanent("the text is in Klingon")

    thread = running(worker)
    client = Client(server.url)
    kinds = {"flaky": {"queue": "f", "retry": {"initial_delay": "50ms"}}, "picky": {"queue": "f"}}
    ok = client.start({"name": "flaky", "kinds": kinds, "steps": [{"id": "s", "kind": "flaky"}]})
    bad = client.start({"name": "picky", "kinds": kinds, "steps": [{"id": "s", "kind": "picky"}]})
    run = client.wait(ok)
    assert (run["status"], run["output"]["s"]) == ("COMPLETED", {"ok": 2})
    run = client.wait(bad)
    assert run["status"] == "FAILED"
    assert run["steps"][0]["attempts"] == 1, "a permanent failure is not retried"
    assert "the text is in Klingon" in str(run["steps"][0]["error_message"])
    worker.stop()
    thread.join(timeout=5)


def test_the_client_lists_and_answers_approvals(server: Any) -> None:
    client = Client(server.url)
    definition = {
        "name": "gated",
        "steps": [
            {"id": "draft", "kind": "echo", "with": {"text": "hi"}},
            {"id": "review", "kind": "noop", "needs": ["draft"], "approval": {"prompt": "ship it?"}},
        ],
    }
    yes, no = client.start(definition), client.start(definition)
    until("two approvals", lambda: len(client.approvals()) == 2)
    assert {a["run_id"] for a in client.approvals()} == {yes, no}
    client.approve(yes, "review", comment="fine")
    client.reject(no, "review", comment="not today")
    assert client.wait(yes)["status"] == "COMPLETED"
    assert client.wait(no)["status"] == "FAILED"
    with pytest.raises(CairnError) as refused:
        client.approve(no, "review")
    assert refused.value.status == 409
    with pytest.raises(CairnError) as missing:
        client.run("wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7")
    assert (missing.value.status, missing.value.code) == (404, "run_not_found")


def test_a_durable_call_that_returns_nothing_is_recorded_too(server: Any) -> None:
    sent: List[str] = []
    worker = Worker(server.url, queues=["mail"], poll_ms=500)

    def send_email(to: str) -> None:
        sent.append(to)

    @worker.kind("notify")
    def notify(ctx: TaskContext, input: Any) -> Any:
        assert ctx.call("send_email", send_email, input["to"]) is None
        if ctx.attempt == 1:
            raise ConnectionError("the process died right after sending")
        return {"sent": True, "attempt": ctx.attempt}

    thread = running(worker)
    client = Client(server.url)
    kinds = {"notify": {"queue": "mail", "retry": {"initial_delay": "50ms"}}}
    run = client.wait(client.start({"name": "mail", "kinds": kinds, "steps": [{"id": "n", "kind": "notify", "with": {"to": "ada@example.com"}}]}))
    assert (run["status"], run["output"]["n"]) == ("COMPLETED", {"sent": True, "attempt": 2})
    assert sent == ["ada@example.com"], "the email went out again on the retry"
    with pytest.raises(TypeError):
        from cairn import request_hash

        request_hash("x", [object()], {})
    worker.stop()
    thread.join(timeout=5)
