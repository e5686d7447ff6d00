"""A real `cairn serve` on loopback for each test, on its own SQLite file."""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import threading
from typing import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def cairn_bin() -> str:
    path = os.environ.get("CAIRN_BIN") or str(ROOT / "target" / "debug" / "cairn")
    if not os.path.exists(path):
        pytest.fail(f"no cairn binary at {path}: build it (cargo build -p cairn) or set CAIRN_BIN")
    return path


class Server:
    def __init__(self, url: str, process: "subprocess.Popen[str]", db: pathlib.Path) -> None:
        self.url = url
        self.process = process
        self.db = db


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    db = tmp_path / "cairn.db"
    env = dict(os.environ, CAIRN_DB=str(db), NO_COLOR="1")
    process = subprocess.Popen(
        [cairn_bin(), "serve", "--listen", "127.0.0.1:0"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    url = None
    while url is None:
        line = lines.get(timeout=20)
        if "listening on http://" in line:
            url = "http://" + line.split("http://")[1].split()[0]
    yield Server(url, process, db)
    process.kill()
    process.wait()
