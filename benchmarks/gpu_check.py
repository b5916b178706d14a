"""`gamjeong bench gpu`: the whole GPU check in one command, for a GPU host that is lent for minutes.

export (fp16, O4 fusions, for CUDA) -> `bench model` (ONNX fp16 against PyTorch fp16, both on CUDA) -> `bench server`
(unary, stream, chat at 1/16/64/256 clients, the clients spread over several processes) -> the load generator alone
against echo processes (no model) at the highest concurrency, which shows whether it could push more than the server
took. The random-weight real-size model and its export stay in the cache (GAMJEONG_CACHE_DIR), so a second run on the
same host skips both. A step that fails is recorded and the steps that need it are skipped; the command then exits 1.

Everything lands in one folder, at most 8 files: summary.md (the figures against the targets), summary.json, model.json,
model.md, server.json, server.md, throughput.png, server.log. `--device cpu` runs the same steps on a tiny model with
fp32 and short loads: what CI tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from gamjeong.errors import GamjeongError

from .environment import environment
from .model_bench import ModelBenchConfig, default_cache_dir, run_model_benchmark
from .random_models import RANDOM_MODEL_NAME, build_random_model_dir, export_for_benchmark, random_real_size_model
from .report import model_markdown, server_markdown, throughput_chart
from .server_bench import ServerBenchConfig, run_server_benchmark
from .texts import load_texts

RESULT_FILES = (
    "summary.md",
    "summary.json",
    "model.json",
    "model.md",
    "server.json",
    "server.md",
    "throughput.png",
    "server.log",
)

# Issue 20's targets on one H200: (key, what, target, higher is better).
TARGETS: tuple[tuple[str, str, float, bool], ...] = (
    ("unary_256_texts_per_s", "unary at 256 clients, texts/s", 15_000, True),
    ("unary_256_ratio_to_raw", "unary at 256 clients ÷ raw predictor's best grouping", 0.7, True),
    ("stream_64_texts_per_s", "ClassifyStream at 64 clients, texts/s", 20_000, True),
    ("chat_256_texts_per_s", "ClassifyChat at 256 clients, texts/s", 10_000, True),
    ("unary_1_p50_ms", "unary at 1 client, p50 ms", 3.0, False),
    ("gpu_busy_256_pct", "GPU busy at 256 clients (unary), %", 60, True),
    ("errors", "errors over every server run", 0, False),
    (
        "load_generator_headroom",
        "load generator alone (echo, unary) ÷ the server's unary, at the top concurrency",
        2.0,
        True,
    ),
)


class GpuCheckConfig(BaseModel):
    """Settings of one `gamjeong bench gpu` run."""

    device: Literal["cuda", "cpu"] = "cuda"
    model: Path | None = Field(None, description="Trained model directory [default: the random-weight one].")
    output: Path = Path("bench-results/gpu")
    concurrencies: list[int] = Field(default_factory=lambda: [1, 16, 64, 256])
    duration_s: float = Field(4.0, gt=0, description="Timed seconds per server mode and concurrency.")
    client_processes: int | None = Field(None, ge=1, description="Load generator processes [default: cores / 2].")
    channels: int = Field(2, ge=1, description="gRPC channels per client process.")
    server_workers: int | None = Field(None, ge=1, description="--workers of the server (passed only when given).")
    echo_processes: int | None = Field(None, ge=1, description="Echo server processes [default: cores / 2].")
    max_batch_size: int | None = Field(None, ge=1, description="--max-batch-size of the server.")
    data: Path | None = None


def cpu_settings(config: GpuCheckConfig) -> GpuCheckConfig:
    """--device cpu: the same steps at sizes a CI run affords (unless given). On CUDA the server batches up to 128
    texts unless told otherwise: on the H200 the raw predictor's best grouping gave 9,759 texts/s with batches of at
    most 32 and 18,114 with at most 128 (issue 20), so the default 32 alone would cap the server below the target."""
    fields = config.model_fields_set
    if config.device == "cuda":
        return config if "max_batch_size" in fields else config.model_copy(update={"max_batch_size": 128})
    updates: dict[str, Any] = {}
    if "concurrencies" not in fields:
        updates["concurrencies"] = [1, 4]
    if "duration_s" not in fields:
        updates["duration_s"] = 0.4
    return config.model_copy(update=updates)


def _default_processes() -> int:
    """Half the cores: one client process makes about 2,100-2,900 unary calls/s when it is busy (0.34-0.48 ms of CPU a
    call on the 2-core EPYC, docs/gpu.md), and 15,000 calls/s is the target; idle ones cost next to nothing."""
    return max(1, (os.cpu_count() or 1) // 2)


class _Steps:
    """Runs the steps in order, timing each; a failed step is recorded (not raised) and its dependants skipped."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.record: dict[str, dict[str, Any]] = {}

    def run(self, name: str, needs: list[Any], action: Callable[[], Any]) -> Any:
        if any(result is None for result in needs):
            self.record[name] = {"status": "skipped", "reason": "an earlier step it needs failed"}
            return None
        self.progress(f"== {name}")
        started = time.perf_counter()
        try:
            result = action()
        except Exception as exc:  # whatever it was: a lent GPU host's run should still leave the other steps' figures
            self.record[name] = {
                "status": "failed",
                "reason": str(exc),
                "seconds": round(time.perf_counter() - started, 1),
            }
            self.progress(f"{name} failed: {exc}")
            return None
        self.record[name] = {"status": "ok", "seconds": round(time.perf_counter() - started, 1)}
        return result

    @property
    def failed(self) -> list[str]:
        return [name for name, step in self.record.items() if step["status"] != "ok"]


def _write(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_gpu_check(config: GpuCheckConfig, *, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    cuda = config.device == "cuda"
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:  # a folder reused from an earlier run holds only this run's files
        (out / name).unlink(missing_ok=True)
    client_processes = config.client_processes or _default_processes()
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "kind": "gpu-check",
        "device": config.device,
        "note": "random weights: timing only" if config.model is None else f"model {config.model}",
        "settings": config.model_dump(mode="json") | {"client_processes": client_processes},
        "environment": environment(None),
    }
    texts = load_texts(config.data).texts
    steps = _Steps(progress)
    with tempfile.TemporaryDirectory(prefix="gamjeong-gpu-check-") as tmp:
        work = Path(tmp)

        def trained() -> Path:
            if config.model is not None:
                if not config.model.is_dir():
                    raise GamjeongError(f"Model directory '{config.model}' does not exist.")
                return config.model
            if cuda:
                return random_real_size_model(default_cache_dir(), texts, None, progress)[0]
            build_random_model_dir(work / "tiny-model", texts, real_size=False, tokenizer_dir=None)
            return work / "tiny-model"

        model_dir = steps.run("model", [], trained)

        def export() -> Path:
            assert model_dir is not None
            if cuda and config.model is None:
                dest = default_cache_dir() / RANDOM_MODEL_NAME / "onnx-fp16-O4-cuda"
                return export_for_benchmark(
                    model_dir, dest, "fp16", random_weights=True, progress=progress, target="cuda", optimize="O4"
                )
            # the check times the model: the parity gate is forced open (its figures stay in the export's manifest)
            if cuda:
                return export_for_benchmark(
                    model_dir,
                    work / "onnx-fp16-O4",
                    "fp16",
                    random_weights=True,
                    progress=progress,
                    target="cuda",
                    optimize="O4",
                )
            return export_for_benchmark(model_dir, work / "onnx-fp32", "fp32", random_weights=True, progress=progress)

        export_dir = steps.run("export", [model_dir], export)
        precision = "fp16" if cuda else "fp32"

        def bench_model() -> dict[str, Any]:
            bench = ModelBenchConfig(
                model=model_dir,
                onnx=[export_dir],
                backends=[f"pytorch-{precision}", f"onnx-{precision}"],
                device=config.device,
                batch_sizes=[1, 32, 128] if cuda else [1, 4],
                seq_lengths=[32, 128] if cuda else [16],
                iterations=20 if cuda else 3,
                warmup=3 if cuda else 1,
                min_iterations=5 if cuda else 1,
                max_cell_seconds=5.0,
                real_texts=512 if cuda else 16,
                real_text_seconds=1.0 if cuda else 0.1,
                agreement_texts=64 if cuda else 8,
                isolation="subprocess" if cuda else "inprocess",
                threads=None if cuda else 1,  # on a small shared CPU, two spinning torch threads stall each other
                data=config.data,
                output=work / "model",
            )
            results = run_model_benchmark(bench, progress=progress)
            _write(out / "model.json", results)
            (out / "model.md").write_text(model_markdown(results), encoding="utf-8")
            failed = [b["name"] for b in results["backends"] if b["status"] != "ok"]
            if failed:
                raise GamjeongError(f"backends not measured: {', '.join(failed)} (model.json says why)")
            return results

        model_results = steps.run("bench model", [model_dir, export_dir], bench_model)

        def bench_server() -> dict[str, Any]:
            bench = ServerBenchConfig(
                model=[export_dir],
                concurrencies=config.concurrencies,
                modes=["unary", "stream", "chat"],
                duration_s=config.duration_s,
                warmup_s=1.0 if cuda else 0.2,
                data=config.data,
                output=work / "server",
                max_batch_size=config.max_batch_size,
                client_processes=client_processes,
                channels=config.channels,
                server_workers=config.server_workers,
                threads=None if cuda else 1,
            )
            try:
                results = run_server_benchmark(bench, progress=progress)
            finally:
                for log in (work / "server").glob("server-*.log"):
                    shutil.copyfile(log, out / "server.log")
            _write(out / "server.json", results)
            (out / "server.md").write_text(server_markdown(results), encoding="utf-8")
            throughput_chart(results, out / "throughput.png")
            return results

        server_results = steps.run("bench server", [export_dir], bench_server)

        def load_alone() -> dict[str, Any]:
            bench = ServerBenchConfig(
                echo=True,
                concurrencies=[max(config.concurrencies)],
                modes=["unary"],
                duration_s=config.duration_s,
                warmup_s=0.5 if cuda else 0.2,
                data=config.data,
                output=work / "echo",
                client_processes=client_processes,
                channels=config.channels,
                server_workers=config.echo_processes or _default_processes(),
            )
            return run_server_benchmark(bench, progress=progress)

        echo_results = steps.run("load generator alone", [], load_alone)

    summary["steps"] = steps.record
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["figures"] = figures(model_results, server_results, echo_results)
    summary["load_generator_alone"] = echo_results["rows"] if echo_results else None
    summary["failed_steps"] = steps.failed
    _write(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _row(results: dict[str, Any] | None, mode: str, concurrency: int) -> dict[str, Any] | None:
    if results is None:
        return None
    return next((r for r in results["rows"] if r["mode"] == mode and r["concurrency"] == concurrency), None)


def figures(
    model_results: dict[str, Any] | None, server_results: dict[str, Any] | None, echo_results: dict[str, Any] | None
) -> dict[str, Any]:
    """The headline figures (TARGETS' keys, at the concurrencies run: the highest stands in for 256 and 64 when the
    run did not reach them), plus the model step's pair at one text of 32 tokens."""
    out: dict[str, Any] = {}
    if server_results is not None:
        rows = server_results["rows"]
        top = max(r["concurrency"] for r in rows)
        mid = 64 if any(r["concurrency"] == 64 for r in rows) else top
        unary_top, unary_1 = _row(server_results, "unary", top), _row(server_results, "unary", 1)
        stream_mid, chat_top = _row(server_results, "stream", mid), _row(server_results, "chat", top)
        raw = server_results["servers"][0].get("raw") or {}
        raw_tps = (raw.get("grouped") or {}).get("texts_per_s")
        gpu = unary_top.get("gpu") if unary_top else None
        out |= {
            "top_concurrency": top,
            "unary_256_texts_per_s": unary_top and unary_top["texts_per_s"],
            "unary_256_ratio_to_raw": round(unary_top["texts_per_s"] / raw_tps, 3) if unary_top and raw_tps else None,
            "stream_64_texts_per_s": stream_mid and stream_mid["texts_per_s"],
            "chat_256_texts_per_s": chat_top and chat_top["texts_per_s"],
            "unary_1_p50_ms": unary_1 and unary_1["p50_ms"],
            "gpu_busy_256_pct": gpu[0]["util_mean_pct"] if isinstance(gpu, list) and gpu else "no GPU",
            "errors": sum(r["errors"] for r in rows),
            "server_cores_unary_top": unary_top and unary_top["server_cores"],
            "client_cores_unary_top": unary_top and unary_top["client_cores"],
            # the share of its processes' cores the load generator kept busy: below 0.5, it could have sent 2x more
            "client_busy_share_unary_top": round(unary_top["client_cores"] / unary_top["client_processes"], 3)
            if unary_top
            else None,
        }
        echo_top = _row(echo_results, "unary", top) if echo_results else None
        if echo_top and unary_top and unary_top["requests_per_s"]:
            out["echo_unary_requests_per_s"] = echo_top["requests_per_s"]
            out["load_generator_headroom"] = round(echo_top["requests_per_s"] / unary_top["requests_per_s"], 2)
    if model_results is not None:
        pair = {}
        for row in model_results["rows"]:
            if row["batch_size"] == 1 and row["seq_len"] == min(r["seq_len"] for r in model_results["rows"]):
                pair[row["backend"]] = row["p50_ms"]
        out["model_p50_ms_one_text"] = pair
    return out


def _met(value: Any, target: float, higher: bool) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return "yes" if (value >= target if higher else value <= target) else "no"


def summary_markdown(summary: dict[str, Any]) -> str:
    from .report import environment_lines

    cuda = summary["device"] == "cuda"
    figures = summary["figures"]
    lines = [
        "# gamjeong bench gpu",
        "",
        f"**{summary['note']}**" + ("" if cuda else " — a CPU run (`--device cpu`): tiny model, targets are the GPU's"),
        "",
        *environment_lines(summary),
        f"- load generator: {summary['settings']['client_processes']} client processes × "
        f"{summary['settings']['channels']} channels; {summary['seconds']} s in all",
        "",
        "## Against the targets (one H200)",
        "",
        f"Top concurrency run: {figures.get('top_concurrency', '–')} clients.",
        "",
        "| figure | measured | target | met |",
        "|---|---:|---:|---|",
    ]
    for key, what, target, higher in TARGETS:
        value = figures.get(key)
        shown = "–" if value is None else (f"{value:,.4g}" if isinstance(value, float) else str(value))
        met = _met(value, target, higher) if cuda else "n/a (CPU)"
        lines.append(f"| {what} | {shown} | {'≥' if higher else '≤'} {target:g} | {met} |")
    if figures.get("client_busy_share_unary_top") is not None:
        lines += [
            "",
            f"Unary at {figures['top_concurrency']} clients: server {figures['server_cores_unary_top']} cores, load "
            f"generator {figures['client_cores_unary_top']} cores, {figures['client_busy_share_unary_top']:.0%} of "
            "its processes' time busy (below 50%: it could have sent twice as much).",
        ]
    if figures.get("model_p50_ms_one_text"):
        pair = ", ".join(f"{name} {ms} ms" for name, ms in figures["model_p50_ms_one_text"].items())
        lines += ["", f"One text, shortest length, p50 per call: {pair}."]
    lines += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, step in summary["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '–')} | {step.get('reason', '')} |")
    return "\n".join(lines) + "\n"
