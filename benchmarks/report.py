"""Writing benchmark results: results.json, results.md, a PNG chart, and a rich table on the terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROW_COLUMNS = (
    ("backend", "backend"),
    ("batch_size", "batch"),
    ("seq_len", "seq len"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("texts_per_s", "texts/s"),
    ("tokens_per_s", "tokens/s"),
    ("tokenize_p50_ms", "tok p50 ms"),
    ("inference_p50_ms", "infer p50 ms"),
    ("iterations", "iters"),
)
BACKEND_COLUMNS = (
    ("name", "backend"),
    ("status", "status"),
    ("size_on_disk_mb", "size MB"),
    ("load_s", "load s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("rss_delta_mb", "RSS delta MB"),
    ("agreement_with_pytorch_fp32", "agreement"),
    ("max_abs_prob_diff", "max Δprob"),
    ("reason", "note"),
)


def _backend_row(entry: dict[str, Any]) -> dict[str, Any]:
    return entry | {"reason": entry.get("reason") or entry.get("agreement_note")}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def _markdown_table(columns: tuple[tuple[str, str], ...], items: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(item.get(key)).replace("|", "/") for key, _ in columns) + " |" for item in items]
    return "\n".join([head, rule, *body])


def _load_average(value: Any) -> str:
    return f"{value} at the start of the run" if isinstance(value, list) else str(value)


def environment_lines(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    return [
        f"- date: {env['date_utc']}",
        f"- CPU: {env['cpu_model']} ({env['logical_cpus']} logical CPUs, {env['physical_cores']} physical cores; "
        f"bf16 instructions: {'yes' if env['cpu_bf16'] else 'no'}), {env['memory_gb']} GB RAM; "
        f"load average (1, 5, 15 min) {_load_average(env['load_average_at_start'])}",
        f"- threads requested: {env['threads_requested'] or 'library defaults'} (OMP_NUM_THREADS={env['omp_num_threads_env']})",
        f"- libraries: {libs}; Python {env['python']}",
        *_runtime_lines(env),
    ]


def _runtime_lines(env: dict[str, Any]) -> list[str]:
    """The onnxruntime module that ran and the GPU (results written before these were recorded have neither)."""
    lines = []
    ort = env.get("onnxruntime")
    if ort and ort.get("version"):
        lines.append(
            f"- onnxruntime (the imported module): {ort['version']}, {ort['build']} build, providers "
            f"{', '.join(ort['providers'])}"
        )
    gpu = env.get("gpu")
    if gpu:
        if isinstance(gpu["gpus"], list):
            names = "; ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in gpu["gpus"])
            lines.append(f"- GPU: {names}; driver {gpu['driver']}, CUDA {gpu['cuda_driver']}")
        else:
            lines.append(f"- GPU: {gpu['gpus']} ({gpu.get('why')})")
    return lines


def pivot_markdown(rows: list[dict[str, Any]], value: str) -> str:
    """One line per backend, one column per (batch size, sequence length) cell."""
    cells = sorted({(r["batch_size"], r["seq_len"]) for r in rows}, key=lambda c: (c[1], c[0]))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    lookup = {(r["backend"], r["batch_size"], r["seq_len"]): r[value] for r in rows}
    head = "| backend | " + " | ".join(f"{b}×{s}" for b, s in cells) + " |"
    rule = "|---|" + "|".join("---:" for _ in cells) + "|"
    body = ["| " + name + " | " + " | ".join(_cell(lookup.get((name, *c))) for c in cells) + " |" for name in backends]
    return "\n".join([head, rule, *body])


def model_markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = ["# gamjeong bench model", ""]
    if results.get("note"):
        lines += [f"**{results['note']}**", ""]
    lines += [
        f"- model: {results['model']}",
        f"- texts: {results['texts']}",
        f"- grid: batch sizes {settings['batch_sizes']} × sequence lengths {settings['seq_lengths']}; "
        f"{settings['warmup']} warm-up batches, up to {settings['iterations']} timed batches per cell "
        f"(at least {settings['min_iterations']}, stopping after {settings['max_cell_seconds']} s)",
        f"- latency: {settings['latency']}",
        f"- memory: {settings['memory_method']}",
        *environment_lines(results),
        "",
        "## Backends",
        "",
        _markdown_table(BACKEND_COLUMNS, [_backend_row(b) for b in results["backends"]]),
        "",
        "## p50 latency per batch (ms), by batch size × tokens",
        "",
        pivot_markdown(results["rows"], "p50_ms"),
        "",
        "## Throughput (texts/s), by batch size × tokens",
        "",
        pivot_markdown(results["rows"], "texts_per_s"),
        "",
        "## Every cell",
        "",
        _markdown_table(ROW_COLUMNS, results["rows"]),
        "",
        *real_text_lines(results["backends"]),
    ]
    return "\n".join(lines)


REAL_TEXT_COLUMNS = (
    ("backend", "backend"),
    ("grouping", "grouping"),
    ("mean_texts_per_call", "texts per call"),
    ("padding_ratio", "padded/real"),
    ("texts_per_s", "texts/s"),
    ("tokens_per_s", "real tokens/s"),
)
REAL_TEXT_GROUPINGS = {
    "one_per_call": "one text per call",
    "arrival_batches": "arrival-order batches of {batch_size}",
    "grouped": "windows of {window}, sorted, cost-split",
    "sorted_all": "whole set sorted, batches of {batch_size}",
}


def real_text_lines(backends: list[dict[str, Any]]) -> list[str]:
    """The data's own texts (no fixed length) under four groupings, per backend; nothing when not measured."""
    rows = []
    for backend in backends:
        real = backend.get("real_text")
        if not real:
            continue
        for key, label in REAL_TEXT_GROUPINGS.items():
            rows.append({"backend": backend["name"], "grouping": label.format(**real[key])} | real[key])
    if not rows:
        return []
    first = next(b["real_text"] for b in backends if b.get("real_text"))
    return [
        "## Real texts, as they are",
        "",
        f"{first['texts']} texts of the data, {first['mean_tokens_per_text']} tokens on average (longest "
        f"{first['max_tokens_per_text']}); the cost model of the first backend: {first['cost_model']['call_ms']} ms per "
        f"call, {first['cost_model']['token_us']} µs per padded token.",
        "",
        _markdown_table(REAL_TEXT_COLUMNS, rows),
        "",
    ]


def latency_chart(results: dict[str, Any], path: Path) -> None:
    """p50 latency against batch size, one line per backend, one panel per sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    seq_lengths = sorted({r["seq_len"] for r in rows}) or [0]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(seq_lengths), figsize=(4.5 * len(seq_lengths), 4), squeeze=False)
    for ax, seq_len in zip(axes[0], seq_lengths, strict=True):
        for backend in backends:
            points = sorted(
                (r["batch_size"], r["p50_ms"]) for r in rows if r["backend"] == backend and r["seq_len"] == seq_len
            )
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backend)
        ax.set_title(f"{seq_len} tokens")
        ax.set_xlabel("batch size")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("p50 latency per batch (ms)")
    axes[0][-1].legend(fontsize=8)
    title = "gamjeong bench model: p50 latency by batch size"
    if results.get("note"):
        title += f" ({results['note']})"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    results: dict[str, Any],
    output: Path,
    markdown: Callable[[dict[str, Any]], str],
    chart: Callable | None = None,
    chart_name: str = "",
) -> dict[str, Path]:
    """results.json, results.md and (with `chart`) a PNG in `output`: the files every benchmark run leaves."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "results.json", "markdown": output / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(results), encoding="utf-8")
    if chart is not None:
        paths["chart"] = output / chart_name
        chart(results, paths["chart"])
    return paths


def write_model_results(results: dict[str, Any], output: Path) -> dict[str, Path]:
    return write_results(results, output, model_markdown, latency_chart, "latency.png")


def print_model_results(results: dict[str, Any], console: Console) -> None:
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]  ({results['model']})")
    backends = Table(title="backends")
    for _, title in BACKEND_COLUMNS:
        backends.add_column(title)
    for entry in results["backends"]:
        backends.add_row(*(_cell(_backend_row(entry).get(key)) for key, _ in BACKEND_COLUMNS))
    console.print(backends)
    grid = Table(title="latency per batch (tokenisation + inference)")
    for key, title in ROW_COLUMNS:
        grid.add_column(title, justify="left" if key == "backend" else "right")
    for row in results["rows"]:
        grid.add_row(*(_cell(row.get(key)) for key, _ in ROW_COLUMNS))
    console.print(grid)


# --- server results ---------------------------------------------------------------------------------------------------

SERVER_COLUMNS = (
    ("server", "server"),
    ("mode", "mode"),
    ("concurrency", "clients"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("requests_per_s", "req/s"),
    ("texts_per_s", "texts/s"),
    ("tokens_per_s", "tokens/s"),
    ("errors", "errors"),
    ("mean_batch_size", "mean batch"),
    ("padding_ratio", "padded/real"),
    ("server_cores", "server cores"),
    ("client_cores", "client cores"),
    ("gpu_util", "GPU busy %"),
)


def _gpu_util(row: dict[str, Any]) -> str | None:
    """Mean utilisation of each GPU during the run ("–" without one; rows from before it was sampled: None)."""
    gpu = row.get("gpu")
    if gpu is None or isinstance(gpu, str):
        return None
    return "/".join(f"{g['util_mean_pct']:g}" for g in gpu)


def _server_row(row: dict[str, Any]) -> dict[str, Any]:
    batches = row.get("batches") or {}
    return row | {
        "mean_batch_size": batches.get("mean_batch_size"),
        "padding_ratio": batches.get("padding_ratio"),
        "gpu_util": _gpu_util(row),
    }


def server_summary_lines(server: dict[str, Any]) -> list[str]:
    name = server["backend"]
    lines = [f"- **{name}** ({server['execution_provider']}, quantization {server['quantization'] or 'none'})"]
    raw = server.get("raw")
    if raw is None:
        lines.append(f"  - raw predictor: not measured ({server.get('raw_note', '')})")
        return lines
    single, grouped, whole = raw["single_text"], raw["grouped"], raw["sorted_all"]
    arrival = raw["arrival_batches"]
    lines.append(
        f"  - raw predictor ({raw['backend']}, {raw['texts']} texts of {raw['mean_tokens_per_text']} tokens on "
        f"average): one text per call p50 {_cell(single['p50_ms'])} ms, p99 {_cell(single['p99_ms'])} ms; "
        f"windows of {grouped['window']} sorted and split by the cost model (call {raw['cost_model']['call_ms']} ms, "
        f"token {raw['cost_model']['token_us']} µs): {_cell(grouped['texts_per_s'])} texts/s, "
        f"{_cell(grouped['tokens_per_s'])} tokens/s ({grouped['mean_texts_per_call']} texts per call); "
        f"whole set sorted in batches of {whole['batch_size']}: {_cell(whole['texts_per_s'])} texts/s; "
        f"arrival-order batches of {arrival['batch_size']}: {_cell(arrival['texts_per_s'])} texts/s"
    )
    for mode, ratio in (server.get("ratios") or {}).items():
        parts = []
        if "p50_overhead_ms_at_c1" in ratio:
            parts.append(
                f"overhead at 1 client: +{_cell(ratio['p50_overhead_ms_at_c1'])} ms p50 "
                f"(×{_cell(ratio['p50_latency_ratio_at_c1'])} of raw)"
            )
        if "p50_overhead_ms_at_c1_paired" in ratio:
            paired = server["paired_c1"]
            parts.append(
                f"paired ({paired['calls']} texts, raw then server): median overhead "
                f"{ratio['p50_overhead_ms_at_c1_paired']:+.2f} ms (raw p50 {paired['raw_p50_ms']} ms, "
                f"server p50 {paired['server_p50_ms']} ms; a gRPC call that does no work, after a raw call: "
                f"{paired.get('empty_call_p50_ms', '–')} ms)"
            )
        if "throughput_ratio_at_highest_paired" in ratio:
            paired = server["paired_throughput"]
            parts.append(
                f"paired at {paired['concurrency']} clients (raw best grouping and server alternating): "
                f"×{_cell(ratio['throughput_ratio_at_highest_paired'])} (raw {paired['raw_texts_per_s']}, "
                f"server {paired['server_texts_per_s']} texts/s)"
            )
        if "throughput_ratio_at_highest" in ratio:
            parts.append(
                f"throughput at {ratio['highest_concurrency']} clients: ×{_cell(ratio['throughput_ratio_at_highest'])} "
                "of raw best grouping"
            )
        lines.append(f"  - {mode}: {'; '.join(parts)}")
    return lines


def server_markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = ["# gamjeong bench server", ""]
    if results.get("note"):
        lines += [f"**{results['note']}**", ""]
    lines += [
        f"- texts: {results['texts']}",
        f"- load: {settings['load']}; {settings['duration_s']:g} s per mode and concurrency after "
        f"{settings['warmup_s']:g} s warm-up; ClassifyStream calls carry {settings['stream_texts']} texts",
        f"- latency: {settings['latency']}",
        *environment_lines(results),
        "",
        "## Against the raw predictor",
        "",
    ]
    for server in results["servers"]:
        lines += server_summary_lines(server)
    lines += ["", "## Load", "", _markdown_table(SERVER_COLUMNS, [_server_row(r) for r in results["rows"]]), ""]
    lines += ["Model calls the dynamic batcher made, by texts per call (from `gamjeong_batch_size`):", ""]
    for row in results["rows"]:
        batches = row.get("batches")
        if batches:
            buckets = ", ".join(f"{v}× {k}" for k, v in batches["batch_size_buckets"].items()) or "none"
            lines.append(
                f"- {row['server']} {row['mode']} ×{row['concurrency']}: {batches['model_calls']} model calls ({buckets})"
            )
    return "\n".join(lines) + "\n"


def throughput_chart(results: dict[str, Any], path: Path) -> None:
    """Texts per second against concurrency, one line per (server, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = results["rows"]
    for key in dict.fromkeys((r["server"], r["mode"]) for r in rows):
        points = sorted((r["concurrency"], r["texts_per_s"]) for r in rows if (r["server"], r["mode"]) == key)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{key[0]} {key[1]}")
    for index, server in enumerate(results["servers"]):
        if server.get("raw"):
            raw = server["raw"]["grouped"]
            ax.axhline(
                raw["texts_per_s"],
                linestyle="--",
                color=f"C{7 + index}",
                label=f"raw {server['backend']}, sorted windows of {raw['window']}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("texts/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("gamjeong bench server: throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_server_results(results: dict[str, Any], output: Path) -> dict[str, Path]:
    return write_results(results, output, server_markdown, throughput_chart, "throughput.png")


def print_server_results(results: dict[str, Any], console: Console) -> None:
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]")
    table = Table(title="gRPC server, closed-loop load")
    for key, title in SERVER_COLUMNS:
        table.add_column(title, justify="left" if key in ("server", "mode") else "right")
    for row in results["rows"]:
        table.add_row(*(_cell(_server_row(row).get(key)) for key, _ in SERVER_COLUMNS))
    console.print(table)
    for server in results["servers"]:
        for line in server_summary_lines(server):
            console.print(line.replace("**", ""), highlight=False)
