"""The load generator of `bench server` (client processes, channels, merged tallies, CPU of both sides) and NVML
sampling, against the echo server (no model); never timing thresholds."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from gamjeong.benchmarks import gpu_monitor
from gamjeong.benchmarks.load_processes import LoadGenerator, ProcessTreeCpu, split
from gamjeong.benchmarks.server_process import started_echo_server

TEXTS = ["좋아요", "너무 슬퍼요", "화가 나네요", "그냥 그래요", "깜짝 놀랐어요"]


@pytest.mark.parametrize(("concurrency", "processes"), [(1, 4), (5, 2), (256, 6), (7, 7)])
def test_split_spreads_clients_evenly(concurrency: int, processes: int) -> None:
    shares = split(concurrency, processes)
    assert len(shares) == processes and sum(shares) == concurrency and max(shares) - min(shares) <= 1


def test_client_processes_merge_their_tallies(tmp_path: Path) -> None:
    with started_echo_server(2, tmp_path / "echo.log", 60) as (target, server):
        tree = ProcessTreeCpu(server.pid)
        assert tree.processes() >= 3  # the parent and its two echo processes (and spawn's resource tracker)
        with LoadGenerator(target, TEXTS, stream_texts=4, processes=2, channels=2) as generator:
            runs = {mode: generator.run(mode, 5, 0.4) for mode in ("unary", "stream", "chat")}
            single = generator.run("unary", 1, 0.3)  # one client: one process runs, the other sits it out
        with LoadGenerator(target, TEXTS, stream_texts=4, channels=3) as in_process:
            here = in_process.run("unary", 4, 0.3)
    for mode, run in runs.items():
        assert run["errors"] == {} and run["latencies"], mode
        assert [p["clients"] for p in run["per_process"]] == [3, 2]
        assert run["texts"] == sum(p["texts"] for p in run["per_process"])
        assert run["texts"] == len(run["latencies"]) * (4 if mode == "stream" else 1)
        assert run["client_cpu_s"] > 0 and all(p["cpu_s"] > 0 for p in run["per_process"])
        assert run["elapsed"] >= 0.4 * 0.9  # the span from the first start to the last end covers the timed run
    assert [p["clients"] for p in single["per_process"]] == [1]
    assert here["per_process"] == [{"clients": 4, "texts": here["texts"], "cpu_s": here["per_process"][0]["cpu_s"]}]
    assert here["texts"] == len(here["latencies"]) > 0


def test_process_tree_cpu_counts_children(tmp_path: Path) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)"
    parent_code = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {burn!r}])\ntime.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        tree = ProcessTreeCpu(parent.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = psutil.Process(parent.pid).children()
            if children and sum(children[0].cpu_times()[:2]) >= 0.3:
                break
            time.sleep(0.1)
        own = sum(psutil.Process(parent.pid).cpu_times()[:2])
        assert tree.processes() == 2
        assert tree.seconds() >= own + 0.3  # type: ignore[operator]
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_no_nvml_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert gpu_monitor.gpu_environment()["gpus"] == gpu_monitor.NO_GPU
    with gpu_monitor.GpuSampler(0.01) as sampler:
        time.sleep(0.05)
    assert sampler.summary() == gpu_monitor.NO_GPU


def _fake_nvml(busy: list[int]) -> types.ModuleType:
    """A stand-in for pynvml: one 141 GB GPU whose utilisation cycles through `busy`."""
    nvml = types.ModuleType("pynvml")
    readings = iter(busy * 1000)

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError  # type: ignore[attr-defined]
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda handle: b"NVIDIA H200"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(total=141 * 2**30, used=2**30)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=next(readings))  # type: ignore[attr-defined]
    nvml.nvmlSystemGetDriverVersion = lambda: "580.95.05"  # type: ignore[attr-defined]
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 13000  # type: ignore[attr-defined]
    return nvml


def test_nvml_names_and_samples_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([40, 80]))
    environment = gpu_monitor.gpu_environment()
    assert environment["gpus"] == [{"index": 0, "name": "NVIDIA H200", "memory_gb": 141.0}]
    assert environment["driver"] == "580.95.05" and environment["cuda_driver"] == "13.0"
    with gpu_monitor.GpuSampler(0.005) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler._samples.get(0, [])) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    (gpu,) = sampler.summary()
    assert gpu["samples"] >= 4 and gpu["util_max_pct"] == 80 and 40 <= gpu["util_mean_pct"] <= 80
    assert gpu["memory_max_mb"] == 1024.0


def test_environment_names_the_imported_onnxruntime_and_the_cache_follows_gamjeong_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import onnxruntime

    from gamjeong.benchmarks.environment import environment
    from gamjeong.benchmarks.model_bench import ModelBenchConfig, default_cache_dir

    env = environment(None)
    assert env["onnxruntime"]["version"] == onnxruntime.__version__ == env["libraries"]["onnxruntime"]
    assert env["onnxruntime"]["build"] == onnxruntime.get_device()
    assert env["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    assert env["gpu"]["gpus"] == gpu_monitor.NO_GPU or isinstance(env["gpu"]["gpus"], list)
    monkeypatch.setenv("GAMJEONG_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "bench" == ModelBenchConfig().cache_dir


def test_server_workers_reach_the_serve_command_only_when_given(tmp_path: Path) -> None:
    from gamjeong.benchmarks.server_bench import ServerBenchConfig
    from gamjeong.benchmarks.server_process import serve_command

    plain = serve_command(tmp_path, ServerBenchConfig(), 1, 2)
    assert "--workers" not in plain
    workers = serve_command(tmp_path, ServerBenchConfig(server_workers=3), 1, 2)
    assert workers[workers.index("--workers") + 1] == "3" and workers[: len(plain)] == plain
