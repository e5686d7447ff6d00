"""JSON over HTTP with the standard library only: one request per call, errors as exceptions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Optional


class CairnError(Exception):
    """An answer from Cairn that is not a success: its HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class Http:
    """Where Cairn listens, and the bearer token to send (if auth is on)."""

    def __init__(self, url: str, token: Optional[str] = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                error = json.loads(raw)["error"]
                raise CairnError(e.code, error.get("code", "error"), error.get("message", ""), error.get("details"))
            except (ValueError, KeyError, TypeError):
                raise CairnError(e.code, "http_error", raw.decode(errors="replace")[:500]) from None
        return json.loads(text) if text else None

    def post(self, path: str, body: Any, timeout: float = 30.0) -> Any:
        return self.request("POST", path, body, timeout)

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path, None, timeout)
