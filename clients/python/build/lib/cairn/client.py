"""A small client for Cairn's REST API: start runs, wait for them, list and answer approvals."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any, Dict, List, Optional, Union

from ._http import CairnError, Http

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


class Client:
    """Talks to `cairn serve` at `url` (with a bearer `token` when auth is on)."""

    def __init__(self, url: str, token: Optional[str] = None) -> None:
        self.http = Http(url, token)

    def start(
        self,
        workflow: Union[str, Dict[str, Any]],
        inputs: Optional[Dict[str, Any]] = None,
        version: Optional[int] = None,
    ) -> str:
        """Starts a run of a registered workflow (by name) or of a definition (a dict); returns
        its id."""
        body: Dict[str, Any] = {"workflow": workflow, "inputs": inputs or {}}
        if version is not None:
            body["version"] = version
        answer: Dict[str, Any] = self.http.post("/v1/runs", body)
        return str(answer["id"])

    def run(self, run_id: str) -> Dict[str, Any]:
        """The run: status, steps, output, failure."""
        answer: Dict[str, Any] = self.http.get(f"/v1/runs/{_segment(run_id)}")
        return answer

    def wait(self, run_id: str, timeout: float = 60.0, every: float = 0.1) -> Dict[str, Any]:
        """Waits until the run completes, fails or is cancelled; returns it. Raises `TimeoutError`
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout}s")
            time.sleep(every)

    def cancel(self, run_id: str, reason: Optional[str] = None) -> None:
        """Cancels the run (its external tasks learn it at their next heartbeat)."""
        self.http.post(f"/v1/runs/{_segment(run_id)}/cancel", {"reason": reason} if reason else {})

    def approvals(self) -> List[Dict[str, Any]]:
        """The steps waiting for a person's decision, oldest first."""
        answer: Dict[str, Any] = self.http.get("/v1/approvals")
        return list(answer["approvals"])

    def approve(self, run_id: str, step: str, comment: Optional[str] = None) -> Dict[str, Any]:
        """Approves the step waiting at its gate."""
        return self._decide(run_id, step, {"decision": "approve", "comment": comment})

    def reject(self, run_id: str, step: str, comment: Optional[str] = None) -> Dict[str, Any]:
        """Rejects the step waiting at its gate."""
        return self._decide(run_id, step, {"decision": "reject", "comment": comment})

    def _decide(self, run_id: str, step: str, body: Dict[str, Any]) -> Dict[str, Any]:
        body = {k: v for k, v in body.items() if v is not None}
        answer: Dict[str, Any] = self.http.post(f"/v1/runs/{_segment(run_id)}/approvals/{_segment(step)}", body)
        return answer


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


__all__ = ["Client", "CairnError", "TERMINAL"]
