"""Writing benchmark results: results.json, results.md, a PNG chart, and a rich table on the terminal."""

from __future__ import annotations

import json
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


def environment_lines(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    return [
        f"- date: {env['date_utc']}",
        f"- CPU: {env['cpu_model']} ({env['logical_cpus']} logical CPUs, {env['physical_cores']} physical cores; "
        f"bf16 instructions: {'yes' if env['cpu_bf16'] else 'no'}), {env['memory_gb']} GB RAM; "
        f"load average at start {env['load_average_at_start']}",
        f"- threads requested: {env['threads_requested'] or 'library defaults'} (OMP_NUM_THREADS={env['omp_num_threads_env']})",
        f"- libraries: {libs}; Python {env['python']}",
    ]


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
        _markdown_table(BACKEND_COLUMNS, results["backends"]),
        "",
        "## Latency and throughput",
        "",
        _markdown_table(ROW_COLUMNS, results["rows"]),
        "",
    ]
    return "\n".join(lines)


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


def write_model_results(results: dict[str, Any], output: Path) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "results.json", "markdown": output / "results.md", "chart": output / "latency.png"}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(model_markdown(results), encoding="utf-8")
    latency_chart(results, paths["chart"])
    return paths


def print_model_results(results: dict[str, Any], console: Console) -> None:
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]  ({results['model']})")
    backends = Table(title="backends")
    for _, title in BACKEND_COLUMNS:
        backends.add_column(title)
    for entry in results["backends"]:
        backends.add_row(*(_cell(entry.get(key)) for key, _ in BACKEND_COLUMNS))
    console.print(backends)
    grid = Table(title="latency per batch (tokenisation + inference)")
    for key, title in ROW_COLUMNS:
        grid.add_column(title, justify="left" if key == "backend" else "right")
    for row in results["rows"]:
        grid.add_row(*(_cell(row.get(key)) for key, _ in ROW_COLUMNS))
    console.print(grid)
