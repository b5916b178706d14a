"""How many model instances the server runs, with how many threads each, and whether it keeps a solo session.

Measured on 2 cores (docs/benchmarks.md, "Instances and the solo session"): under load, two one-thread sessions side by
side deliver 15-30% more than one two-thread session, because a two-thread call stalls whenever the event loop or
gRPC takes one of its cores (its threads wait for each other at every operator). A lone short text, though, takes
4.6 ms on one two-thread session and 6.2 ms on a one-thread one. So on a CPU the server runs one instance per core
(up to `MAX_AUTO_INSTANCES`) and keeps one more session, the *solo* session, with a thread per core, for a batch that
would run alone on an idle server; the two never run at the same time (server/batcher.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gamjeong.artifacts import is_exported_dir
from gamjeong.server.settings import ServerSettings

# Each instance is one more session in memory (~170 MiB for int8 e5-small); past a few, a many-core machine is better
# served by more threads per instance than by more instances (not measured here: 2 cores).
MAX_AUTO_INSTANCES = 4


@dataclass(frozen=True)
class InstanceLayout:
    instances: int
    threads: int | None  # intra-op threads per instance; None: the runtime's default (one per physical core)
    solo: bool  # keep a session with the runtime's default threads for a lone batch on an idle server

    def describe(self) -> str:
        threads = "runtime default" if self.threads is None else str(self.threads)
        solo = " + a solo session (all cores) for lone batches" if self.solo else ""
        return f"{self.instances} instance(s) x {threads} thread(s){solo}"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a cpuset-limited container sees its own share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def runs_onnx_on_cpu(settings: ServerSettings) -> bool:
    """Whether the server will load an ONNX model on the CPU (the only case where the layout below applies)."""
    if settings.backend == "pytorch" or (settings.backend == "auto" and not is_exported_dir(settings.model)):
        return False
    if settings.device == "cpu":
        return True
    if settings.device == "cuda":
        return False
    from gamjeong.onnx_runtime import available_providers

    return "CUDAExecutionProvider" not in available_providers()


def plan_layout(settings: ServerSettings, cpus: int | None = None, onnx_on_cpu: bool | None = None) -> InstanceLayout:
    """The layout for these settings: `--instances 0` (the default) is one per CPU for ONNX on a CPU and one
    elsewhere (a GPU, PyTorch); threads per instance are `--intra-op-threads`, else the CPUs shared out; the solo
    session is kept (`--solo`, default on) when the instances have fewer threads than the machine has CPUs."""
    cpus = cpus or usable_cpus()
    on_cpu = runs_onnx_on_cpu(settings) if onnx_on_cpu is None else onnx_on_cpu
    instances = settings.instances or (min(cpus, MAX_AUTO_INSTANCES) if on_cpu else 1)
    threads = settings.intra_op_threads
    if threads is None and instances > 1 and on_cpu:
        threads = max(1, cpus // instances)
    solo = settings.solo and on_cpu and threads is not None and threads < cpus
    return InstanceLayout(instances=instances, threads=threads, solo=solo)
