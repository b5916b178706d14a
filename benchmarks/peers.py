"""`gamjeong bench peers`: gamjeong and infinity-emb side by side, serving the same exported ONNX file.

infinity-emb gets its own virtualenv (the CPU build of torch first, so no CUDA wheels come with it) and runs its optimum
engine from a prepared directory (`--model-id .`): config.json, the tokenizer files and the graph, linked under a name
containing "quantize" (what infinity prefers on CPU). Both servers, one at a time, get the same closed-loop load on the
same texts, one text per request (benchmarks/load.py): gamjeong over gRPC unary and HTTP POST /v1/classify, infinity
over HTTP POST /classify. The first texts are classified one at a time by both and the probabilities compared: the same
graph gives the same numbers, the check that infinity really serves this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PositiveInt

from gamjeong.artifacts import TOKENIZER_FILES, find_manifest
from gamjeong.errors import GamjeongError

from .load import HttpApi, run_http_load
from .report import _cell, _markdown_table, write_results
from .server_process import free_port, stop_process

INFINITY_VERSION = "0.0.78"
INFINITY_REQUIREMENT = f"infinity-emb[optimum,server]=={INFINITY_VERSION}"
# Installed first and alone: the CPU build (pip's configured sources, as `make setup` does); infinity's optimum extra
# would otherwise pull torch with several GB of CUDA wheels.
TORCH_REQUIREMENT = "torch==2.13.0"
INSTALLED_MARKER = ".gamjeong-peers-installed"  # written last: a half-finished install is redone
INT8_FILE = "model_quantized.onnx"  # infinity's optimum engine prefers a name containing "quantize" on CPU
FP_FILE = "model.onnx"
# What transformers' AutoTokenizer and AutoConfig read, besides the tokenizer files gamjeong knows.
PEER_FILES = ("config.json", *TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
INFINITY_API = HttpApi(path="/classify", body=lambda text: {"input": [text]}, answered=lambda a: len(a["data"]))


class PeersConfig(BaseModel):
    """Settings of one `gamjeong bench peers` run."""

    model: Path = Field(description="Exported directory both servers serve.")
    concurrencies: list[PositiveInt] = Field(default_factory=lambda: [1, 16, 64], min_length=1)
    duration_s: float = Field(10.0, gt=0)
    warmup_s: float = Field(1.0, ge=0)
    data: Path | None = None
    output: Path = Path("bench-results/peers")
    infinity_venv: Path | None = None
    agreement_texts: int = Field(32, ge=0, description="Texts classified one at a time by both and compared.")
    startup_timeout_s: float = Field(300.0, gt=0)


def infinity_version(venv: Path) -> str | None:
    code = "from importlib.metadata import version; print(version('infinity-emb'))"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


def default_infinity_venv() -> Path:
    from gamjeong.base_models.registry import cache_root

    return cache_root() / "peers" / "infinity-venv"


# --- installing infinity-emb -----------------------------------------------------------------------------------------


def install_commands(venv: Path) -> list[list[str]]:
    python = str(venv / "bin" / "python")  # pip through the virtualenv's python: its scripts' shebangs may be too long
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", TORCH_REQUIREMENT],
        [python, "-m", "pip", "install", INFINITY_REQUIREMENT],
    ]


def ensure_infinity(
    venv: Path, progress: Callable[[str], None] = lambda m: None, run: Callable[..., Any] = subprocess.run
) -> Path:
    """The infinity_emb executable of `venv`, installed there first unless an earlier run finished installing it."""
    executable, python = venv / "bin" / "infinity_emb", str(venv / "bin" / "python")
    marker = venv / INSTALLED_MARKER
    if executable.is_file() and marker.is_file() and marker.read_text().strip() == INFINITY_REQUIREMENT:
        return executable
    # a virtualenv set up by hand (--infinity-venv) is used as it is when infinity and its optimum engine import
    importable = [python, "-c", "import infinity_emb, optimum.onnxruntime"]
    if executable.is_file() and run(importable, capture_output=True, check=False).returncode == 0:
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-install.log"
    progress(f"installing {INFINITY_REQUIREMENT} into {venv} (the CPU build of torch first; log: {log})")
    with log.open("w", encoding="utf-8") as log_file:
        for command in install_commands(venv):
            log_file.write(f"$ {' '.join(command)}\n")
            log_file.flush()
            result = run(command, stdout=log_file, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                raise GamjeongError(
                    f"Installing infinity-emb failed at `{' '.join(command[-2:])}` (see {log}); check that pip can "
                    f"reach a package index, or install `{TORCH_REQUIREMENT}` and then `{INFINITY_REQUIREMENT}` into a "
                    "virtualenv yourself and pass it with --infinity-venv."
                )
    if not executable.is_file():
        raise GamjeongError(f"pip finished but {executable} is missing (see {log}); pass a working --infinity-venv.")
    marker.write_text(INFINITY_REQUIREMENT + "\n")
    return executable


# --- the model directory infinity serves -----------------------------------------------------------------------------


def prepare_infinity_dir(export_dir: Path, target: Path) -> dict[str, Any]:
    """`target` holds links to the export's config, tokenizer files and graph (named with "quantize" when it is int8)
    and nothing else, so infinity can find no other ONNX file; returns what was linked."""
    from gamjeong.onnx_runtime import graph_precision

    export_dir = export_dir.expanduser().resolve()
    manifest = find_manifest(export_dir)
    graph = export_dir / (manifest.model_file if manifest else FP_FILE)
    if not graph.is_file():
        raise GamjeongError(f"'{export_dir}' holds no {graph.name}; give an exported directory (`gamjeong export`).")
    if not (export_dir / "config.json").is_file() or not any((export_dir / f).is_file() for f in TOKENIZER_FILES):
        raise GamjeongError(f"'{export_dir}' lacks config.json or tokenizer files; export the model again.")
    precision = graph_precision(graph)
    onnx_name = INT8_FILE if precision == "int8" else FP_FILE
    if target.exists():  # links of an earlier run, and the .infinity_cache folder infinity leaves in its cwd
        for old in target.iterdir():
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    linked = [name for name in dict.fromkeys(PEER_FILES) if (export_dir / name).is_file()]
    for name in linked:
        (target / name).symlink_to(export_dir / name)
    (target / onnx_name).symlink_to(graph)
    return {"dir": str(target), "onnx_file": onnx_name, "source_graph": str(graph), "precision": precision}


def infinity_command(executable: Path, port: int) -> list[str]:
    """infinity's v2 CLI, run with the prepared directory as its working directory."""
    return [
        str(executable), "v2", "--model-id", ".", "--engine", "optimum", "--device", "cpu",
        "--no-model-warmup", "--onnx-disable-optimize", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning",  # as the gamjeong server the benchmark starts: no access log line per request
    ]  # fmt: skip


def infinity_env(hf_cache: Path) -> dict[str, str]:
    # no telemetry, no Hub, and its own Hugging Face cache: infinity keeps optimised graphs under
    # HF_HUB_CACHE/infinity_onnx/<provider>/<model id>, which for `--model-id .` every model would share
    return dict(os.environ, DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hf_cache))


@contextlib.contextmanager
def started_infinity(
    executable: Path, model_dir: Path, log: Path, timeout_s: float
) -> Iterator[tuple[str, subprocess.Popen]]:
    """infinity_emb serving `model_dir` on a free port; yields (HOST:PORT, process) once GET /health answers."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            infinity_command(executable, port), cwd=model_dir, stdout=log_file, stderr=subprocess.STDOUT,
            env=infinity_env(model_dir.parent / "infinity-hf-cache"),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
                    raise GamjeongError(f"infinity_emb exited with code {process.returncode}: {' | '.join(tail)}")
                with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{address}/health", timeout=2):
                    break  # answered 200 (urlopen raises on anything else)
                if time.monotonic() > deadline:
                    raise GamjeongError(f"infinity_emb did not answer /health within {timeout_s:.0f} s; see {log}.")
                time.sleep(0.5)
            yield address, process
        finally:
            stop_process(process)


# --- answers ---------------------------------------------------------------------------------------------------------


def infinity_scores(answer: dict[str, Any]) -> list[dict[str, float]]:
    """infinity's /classify answer, {"data": [[{"label", "score"}, ...] per text], ...}, as {label: probability}."""
    try:
        return [{str(item["label"]): float(item["score"]) for item in text} for text in answer["data"]]
    except (KeyError, TypeError, ValueError):
        raise GamjeongError(f"infinity's /classify answered in an unexpected shape: {str(answer)[:200]}") from None


def top_label(scores: dict[str, float]) -> str:
    return max(scores.items(), key=lambda item: item[1])[0]


def infinity_classify(address: str, texts: list[str]) -> list[dict[str, float]]:
    """The texts classified one request each (batches of one: the timed load's shape, and exact against gamjeong)."""
    results = []
    for text in texts:
        request = urllib.request.Request(
            f"http://{address}/classify", data=json.dumps({"input": [text]}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            results += infinity_scores(json.loads(response.read()))
    return results


def agreement(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> dict[str, Any] | None:
    """Same top label and the largest probability difference over the texts both classified."""
    pairs = list(zip(ours, theirs, strict=False))
    if not pairs:
        return None
    return {
        "texts": len(pairs),
        "same_label": sum(top_label(a) == top_label(b) for a, b in pairs),
        "max_abs_prob_diff": max(abs(a[k] - b.get(k, 0.0)) for a, b in pairs for k in a),
    }


# --- load --------------------------------------------------------------------------------------------------------------


def _process_cpu_s(pid: int) -> float | None:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:  # the process is gone: the column stays empty
        return None
    return times.user + times.system


def measure_infinity(
    address: str, pid: int, config: PeersConfig, texts: list[str], progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    from .server_bench import _latency_summary

    rows = []
    for concurrency in sorted(set(config.concurrencies)):
        progress(f"infinity-emb: http at concurrency {concurrency} for {config.duration_s:g} s")
        if config.warmup_s:
            asyncio.run(run_http_load(address, concurrency, config.warmup_s, texts, INFINITY_API))
        cpu_before = _process_cpu_s(pid)
        tally = asyncio.run(run_http_load(address, concurrency, config.duration_s, texts, INFINITY_API))
        cpu_after = _process_cpu_s(pid)
        elapsed, cores = tally.elapsed, None  # type: ignore[attr-defined]
        if cpu_before is not None and cpu_after is not None:
            cores = round((cpu_after - cpu_before) / elapsed, 2)
        rows.append(
            {"mode": "http", "concurrency": concurrency, "requests": len(tally.latencies), "texts": tally.texts,
             "errors": sum(tally.errors.values()), "error_codes": tally.errors, **_latency_summary(tally.latencies),
             "requests_per_s": round(len(tally.latencies) / elapsed, 2), "texts_per_s": round(tally.texts / elapsed, 2),
             "server_cores": cores, "load_average_after": [round(x, 2) for x in os.getloadavg()]}
        )  # fmt: skip
    return rows


def _gamjeong_scores(target: str, texts: list[str]) -> list[dict[str, float]]:
    from gamjeong.clients import EmotionClient

    with EmotionClient(target) as client:
        return [client.classify([text])[0].scores for text in texts]


def run_peers_benchmark(config: PeersConfig, *, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from .environment import environment
    from .server_bench import ServerBenchConfig, measure_server
    from .server_process import started_server
    from .texts import load_texts

    model_dir = config.model.expanduser()
    if not model_dir.is_dir():
        raise GamjeongError(f"Model directory '{model_dir}' does not exist.")
    config.output.mkdir(parents=True, exist_ok=True)
    venv = (config.infinity_venv or default_infinity_venv()).expanduser().resolve()
    executable = ensure_infinity(venv, progress)  # first: a failed install stops the run before anything is timed
    prepared = prepare_infinity_dir(model_dir, config.output.resolve() / "infinity-model")
    started_environment = environment(None)
    source = load_texts(config.data)
    texts, check_texts = source.texts, source.texts[: config.agreement_texts]

    server_config = ServerBenchConfig(
        model=[model_dir], concurrencies=config.concurrencies, modes=["unary", "http"], duration_s=config.duration_s,
        warmup_s=config.warmup_s, output=config.output, startup_timeout_s=config.startup_timeout_s,
    )  # fmt: skip
    progress(f"starting `gamjeong serve --model {model_dir}`")
    http_port = free_port()
    with started_server(model_dir, server_config, config.output / "server-gamjeong.log", http_port) as (target, m, _):
        ours = _gamjeong_scores(target, check_texts)
        server, server_rows = measure_server(target, m, server_config, texts, progress, f"127.0.0.1:{http_port}")
    rows = [
        {"server": "gamjeong", "transport": "gRPC" if r["mode"] == "unary" else "HTTP"}
        | {k: v for k, v in r.items() if k != "server"}
        for r in server_rows
    ]

    progress(f"starting infinity_emb {INFINITY_VERSION} (optimum engine) on {prepared['onnx_file']}")
    log = config.output / "server-infinity.log"
    with started_infinity(executable, Path(prepared["dir"]), log, config.startup_timeout_s) as (address, process):
        theirs = infinity_classify(address, check_texts)
        rows += [{"server": "infinity-emb", "transport": "HTTP"} | r for r in measure_infinity(
            address, process.pid, config, texts, progress
        )]  # fmt: skip
    return {
        "kind": "peers",
        "texts": source.description,
        "model_dir": str(model_dir),
        "settings": {
            "concurrencies": config.concurrencies,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "load": "closed loop, one text per request, one server at a time; gRPC: gamjeong's async client, one "
            "channel; HTTP: one keep-alive connection per client; clients in one asyncio process beside the server",
            "server_cores": "server process CPU s per s (gamjeong: process_cpu_seconds_total; infinity: psutil)",
        },
        "environment": started_environment,
        "gamjeong": {key: server[key] for key in ("backend", "execution_provider", "quantization", "limits")},
        "infinity": {
            "version": infinity_version(venv),
            "venv": str(venv),
            "command": " ".join(infinity_command(executable, 0)[1:]).replace("--port 0", "--port PORT"),
            "log": str(log),
            **prepared,
        },
        "agreement": agreement(ours, theirs),
        "rows": rows,
    }


# --- results -----------------------------------------------------------------------------------------------------------

COLUMNS = (
    ("server", "server"), ("transport", "transport"), ("concurrency", "clients"), ("texts_per_s", "texts/s"),
    ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("server_cores", "server cores"), ("errors", "errors"),
)  # fmt: skip


def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """gamjeong's texts/s over infinity's per concurrency, for each of gamjeong's transports."""
    peer = {r["concurrency"]: r["texts_per_s"] for r in rows if r["server"] == "infinity-emb"}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["server"] == "gamjeong" and peer.get(r["concurrency"]):
            out.setdefault(r["transport"], {})[str(r["concurrency"])] = round(
                r["texts_per_s"] / peer[r["concurrency"]], 2
            )
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """What was compared, how, and whether both gave the same answers; then gamjeong's speed over infinity's."""
    env, inf, check = results["environment"], results["infinity"], results.get("agreement")
    lines = [
        f"model: `{results['model_dir']}` ({inf['precision']}), served by infinity as `{inf['onnx_file']}`",
        f"texts: {results['texts']}; {results['settings']['duration_s']:g} s per cell, one text per request",
        f"infinity-emb {inf['version']}: `infinity_emb {inf['command']}`",
        f"date: {env['date_utc']}; CPU: {env['cpu_model']} ({env['logical_cpus']} logical CPUs); "
        f"load average at start {env['load_average_at_start']}",
    ]
    if check:
        lines.append(
            f"the same answers: {check['same_label']}/{check['texts']} texts with the same label, largest "
            f"probability difference {check['max_abs_prob_diff']:.2g} (one text per request on both)"
            + ("" if check["max_abs_prob_diff"] < 1e-3 else ": NOT the same graph's answers, check infinity's log")
        )
    for transport, values in speedups(results["rows"]).items():
        ratios = ", ".join(f"×{v:.2f} at {c}" for c, v in values.items())
        lines.append(f"gamjeong {transport} texts/s ÷ infinity-emb's: {ratios}")
    return lines


def pivot_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per server and transport, one column per concurrency: texts/s, p50 / p99 ms and server cores."""
    levels = sorted({r["concurrency"] for r in rows})
    cells = {(r["server"], r["transport"], r["concurrency"]): r for r in rows}
    lines = [
        "| server | " + " | ".join(f"{c} client{'s' * (c > 1)}" for c in levels) + " |",
        "|---" * (1 + len(levels)) + "|",
    ]
    for server, transport in dict.fromkeys((r["server"], r["transport"]) for r in rows):
        parts = []
        for c in levels:
            r = cells.get((server, transport, c))
            parts.append("–" if r is None else f"{_cell(r['texts_per_s'])} texts/s, {_cell(r['p50_ms'])} / "
                         f"{_cell(r['p99_ms'])} ms, {_cell(r['server_cores'])} cores")  # fmt: skip
        lines.append(f"| {server} ({transport}) | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def peers_markdown(results: dict[str, Any]) -> str:
    lines = [f"- {line}" for line in summary_lines(results)]
    tables = [pivot_markdown(results["rows"]), "", _markdown_table(COLUMNS, results["rows"])]
    return "\n".join(["# gamjeong vs infinity-emb, the same ONNX file", "", *lines, "", *tables, ""])


def write_peers_results(results: dict[str, Any], output: Path) -> dict[str, Path]:
    return write_results(results, output, peers_markdown)


def print_peers_results(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"gamjeong vs infinity-emb {INFINITY_VERSION} on {Path(results['model_dir']).name}")
    for key, title in COLUMNS:
        table.add_column(title, justify="left" if key in ("server", "transport") else "right")
    for row in results["rows"]:
        table.add_row(*(_cell(row.get(key)) for key, _ in COLUMNS))
    console.print(table)
    for line in summary_lines(results):
        console.print(line, markup=False)
