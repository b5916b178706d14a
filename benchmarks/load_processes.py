"""The load generator of `gamjeong bench server`, in one process or several, and the CPU both sides spend.

One asyncio process making every call tops out near what one core can encode and decode, below what a GPU server can
answer: `--client-processes P` spreads the clients over P spawned processes (each its own event loop and `--channels`
gRPC channels), started once per benchmark and told to begin together; their latencies are pooled, their texts summed
over the span from the first start to the last end. P = 1 (the default) runs the clients in this process, as before.

Each side's CPU is user + system seconds per wall second ("cores"): the clients' from getrusage in each client process,
the server's summed over its whole process tree (every `--workers` process, and children it has reaped) with psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
import traceback
from typing import TYPE_CHECKING, Any

from gamjeong.errors import GamjeongError

from .load import run_load

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# Time the parent gives its client processes to receive a run and open their channels before the common start.
START_DELAY_S = 0.3


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: gRPC's own threads too
    return usage.ru_utime + usage.ru_stime


def _timed_load(spec: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """One share of a run in this process: the tally plus wall-clock start and end (comparable across processes) and
    the CPU seconds this process spent."""
    cpu0 = _cpu_seconds()
    start_in = max(0.0, spec.pop("start_at") - time.time())
    tally = asyncio.run(run_load(texts=texts, start_in=start_in, **spec))
    ended = time.time()
    elapsed = tally.elapsed  # type: ignore[attr-defined]
    return {
        "latencies": tally.latencies,
        "texts": tally.texts,
        "errors": tally.errors,
        "started": ended - elapsed,
        "ended": ended,
        "cpu_s": _cpu_seconds() - cpu0,
    }


def _client_process(connection: Connection) -> None:
    """A client process: the texts first, then one run spec after another until None."""
    texts = connection.recv()
    while (spec := connection.recv()) is not None:
        try:
            connection.send(_timed_load(spec, texts))
        except Exception:  # sent back whole: the parent reports it
            connection.send({"failed": traceback.format_exc()})


def split(concurrency: int, processes: int) -> list[int]:
    """Clients per process, as even as can be; processes left without a client sit the run out."""
    return [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]


class LoadGenerator:
    """Closed-loop load from `processes` client processes with `channels` channels each; a context manager (the
    processes live from entry to exit). `run` returns the pooled tally of one (mode, concurrency, seconds)."""

    def __init__(
        self,
        target: str,
        texts: list[str],
        *,
        stream_texts: int,
        http: str | None = None,
        processes: int = 1,
        channels: int = 1,
    ) -> None:
        self.target, self.texts, self.stream_texts, self.http = target, texts, stream_texts, http
        self.processes, self.channels = processes, channels
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def __enter__(self) -> LoadGenerator:
        if self.processes > 1:
            # spawn, not fork: this process has gRPC running, and a forked copy of its threads is not safe
            context = multiprocessing.get_context("spawn")
            for index in range(self.processes):
                parent, child = context.Pipe()
                process = context.Process(target=_client_process, args=(child,), name=f"bench-client-{index}")
                process.daemon = True
                process.start()
                child.close()
                parent.send(self.texts)
                self._workers.append((process, parent))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _, connection in self._workers:
            with contextlib.suppress(OSError):  # a client process that died already
                connection.send(None)
        for process, connection in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
            connection.close()
        self._workers = []

    def run(self, mode: str, concurrency: int, seconds: float) -> dict[str, Any]:
        """{latencies, texts, errors, elapsed, client_cpu_s, per_process: [{clients, texts, cpu_s}]}."""
        spec = {
            "target": self.target,
            "mode": mode,
            "seconds": seconds,
            "stream_texts": self.stream_texts,
            "http": self.http,
            "channels": self.channels,
        }
        shares = split(concurrency, max(1, len(self._workers)))
        firsts = [sum(shares[:i]) for i in range(len(shares))]
        start_at = time.time() + (START_DELAY_S if self._workers else 0.0)
        parts: list[dict[str, Any]] = []
        if not self._workers:
            parts.append(
                _timed_load(spec | {"concurrency": concurrency, "first_client": 0, "start_at": start_at}, self.texts)
            )
        else:
            busy = [(w, n, f) for w, n, f in zip(self._workers, shares, firsts, strict=True) if n > 0]
            for (_, connection), clients, first in busy:
                connection.send(spec | {"concurrency": clients, "first_client": first, "start_at": start_at})
            for (process, connection), _, _ in busy:
                if not connection.poll(seconds + 120):
                    raise GamjeongError(f"Client process {process.name} gave no result within {seconds + 120:.0f} s.")
                part = connection.recv()
                if "failed" in part:
                    raise GamjeongError(f"Client process {process.name} failed: {part['failed'].strip()}")
                parts.append(part)
        errors: dict[str, int] = {}
        for part in parts:
            for code, count in part["errors"].items():
                errors[code] = errors.get(code, 0) + count
        return {
            "latencies": [latency for part in parts for latency in part["latencies"]],
            "texts": sum(part["texts"] for part in parts),
            "errors": errors,
            # the span every process's clients were running in: from the first start to the last end
            "elapsed": max(part["ended"] for part in parts) - min(part["started"] for part in parts),
            "client_cpu_s": sum(part["cpu_s"] for part in parts),
            "per_process": [
                {"clients": n, "texts": part["texts"], "cpu_s": round(part["cpu_s"], 3)}
                for n, part in zip([n for n in shares if n > 0], parts, strict=True)
            ],
        }


class ProcessTreeCpu:
    """User + system CPU seconds of a process and all its descendants, including children they have reaped (which
    the parent's `children_*` times keep): a server's every worker, as they come and go."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)

    def seconds(self) -> float | None:
        import psutil

        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0.0
        for process in processes:
            try:
                t = process.cpu_times()
            except psutil.Error:  # ended between the listing and now
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def processes(self) -> int:
        import psutil

        try:
            return 1 + len(self.root.children(recursive=True))
        except psutil.Error:
            return 0
