"""Helpers of the tests that start a real `gamjeong serve` process: its log lines, its process tree."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import IO


def pump(stream: IO[str], lines: list[str]) -> threading.Thread:
    """Collect a process's output lines into `lines` as they come (a daemon thread)."""
    thread = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


def wait_for(lines: list[str], message: str, timeout: float = 120.0) -> dict:
    """The first JSON log line whose message is `message`, waiting up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if line.startswith("{") and json.loads(line).get("message") == message:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no {message!r} line:\n" + "".join(lines))


def _child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def children(pid: int) -> list[int]:
    """A supervisor's worker processes (not multiprocessing's resource tracker), oldest first."""
    return sorted(p for p in _child_pids(pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes())


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: workers, their exporter processes, the resource tracker."""
    found = _child_pids(pid)
    return found + [d for child in found for d in descendants(child)]


def alive(pid: int) -> bool:
    """True for a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not stat.split(") ")[1].startswith("Z")


def kill_if_running(process: subprocess.Popen) -> None:
    """A test's clean-up: a server the test did not stop (it failed first) is killed and reaped."""
    if process.poll() is None:
        process.kill()
        process.wait()
