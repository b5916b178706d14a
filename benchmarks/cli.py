"""`gamjeong bench model` and `gamjeong bench server`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from gamjeong.choices import Device, Isolation, Runtime
from gamjeong.errors import GamjeongError, flag_error

bench_app = typer.Typer(
    no_args_is_help=True, help="Benchmarks: PyTorch vs ONNX models, and the gRPC server end to end."
)


def _int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise GamjeongError(f"{flag} takes comma-separated integers such as 1,8,32, not '{value}'.") from None
    if not numbers or any(n < 1 for n in numbers):
        raise GamjeongError(f"{flag} takes positive integers such as 1,8,32, not '{value}'.")
    return numbers


def _run_and_report(config: Any, run: Callable, write: Callable, show: Callable) -> dict[str, Any]:
    """What every bench command does once its config is built: run with progress on stderr, write the results to
    `config.output`, print the tables and where they went. Piped to a file, rich's 80-column default would squeeze
    the tables, so a results console that is not a terminal is 200 wide."""
    from rich.console import Console

    console, err = Console(), Console(stderr=True)
    if not console.is_terminal:
        console = Console(width=200)
    results = run(config, progress=lambda message: err.print(f"[dim]{message}[/]"))
    paths = write(results, config.output)
    show(results, console)
    console.print("wrote " + ", ".join(str(path) for path in paths.values()))
    return results


def _str_list(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


@bench_app.command("model")
def model_command(
    model: Path | None = typer.Option(None, "--model", help="Trained model directory (PyTorch backends)."),
    onnx: list[Path] = typer.Option([], "--onnx", help="Exported directory (ONNX backends); repeat for several."),
    tokenizer: Path | None = typer.Option(None, help="Tokenizer directory for the random-weight model."),
    batch_sizes: str | None = typer.Option(None, help="Comma-separated batch sizes [default: 1,8,32]."),
    seq_lengths: str | None = typer.Option(
        None, help="Comma-separated sequence lengths in tokens [default: 16,64,128]."
    ),
    iterations: int | None = typer.Option(None, min=1, help="Timed batches per cell [default: 20]."),
    warmup: int | None = typer.Option(None, min=0, help="Warm-up batches per cell [default: 3]."),
    max_cell_seconds: float = typer.Option(
        30.0, min=0.1, help="Stop a cell's timed loop after this long (min 5 batches)."
    ),
    backends: str | None = typer.Option(
        None,
        help="Comma-separated backends (pytorch-fp32, pytorch-bf16, pytorch-fp16, onnx-fp32, onnx-int8, onnx-fp16).",
    ),
    data: Path | None = typer.Option(
        None,
        help="Labelled data file (any format train reads) whose texts are used (default: GoEmotions-Korean subset).",
    ),
    real_texts: int | None = typer.Option(
        None, min=0, help="Texts of the data timed as they are, under four groupings (0: skip) [default: 512]."
    ),
    real_text_seconds: float | None = typer.Option(None, min=0.1, help="Seconds per grouping [default: 5]."),
    output: Path = typer.Option(Path("bench-results/model"), help="Folder for results.json, results.md, latency.png."),
    quick: bool = typer.Option(False, help="Tiny model, one batch size and length, a few iterations."),
    threads: int | None = typer.Option(None, min=1, help="Intra-op threads for PyTorch and ONNX Runtime."),
    isolation: Isolation = typer.Option(
        Isolation.subprocess,
        help="subprocess: each backend alone (clean memory and load time); inprocess: one process.",
    ),
    device: Device = typer.Option(Device.auto, help="auto: CUDA when PyTorch sees a GPU."),
) -> None:
    """Latency, throughput, memory and agreement of PyTorch and ONNX Runtime backends over a batch × length grid."""
    from pydantic import ValidationError

    from .model_bench import ModelBenchConfig, quick_settings, run_model_benchmark
    from .report import print_model_results, write_model_results

    given = {
        "batch_sizes": _int_list(batch_sizes, "--batch-sizes"),
        "seq_lengths": _int_list(seq_lengths, "--seq-lengths"),
        "iterations": iterations,
        "warmup": warmup,
        "backends": _str_list(backends),
        "real_texts": real_texts,
        "real_text_seconds": real_text_seconds,
    }
    explicit = {key for key, value in given.items() if value is not None}
    try:
        config = ModelBenchConfig(
            model=model,
            onnx=onnx,
            tokenizer=tokenizer,
            max_cell_seconds=max_cell_seconds,
            data=data,
            output=output,
            quick=quick,
            threads=threads,
            isolation=isolation,  # type: ignore[arg-type]
            device=device,  # type: ignore[arg-type]
            **{key: value for key, value in given.items() if value is not None},
        )
    except ValidationError as exc:
        raise flag_error(exc) from None
    config = quick_settings(config, explicit)
    results = _run_and_report(config, run_model_benchmark, write_model_results, print_model_results)
    failed = [b["name"] for b in results["backends"] if b["status"] == "failed"]
    if failed:
        from rich.console import Console

        Console(stderr=True).print(f"[red]failed backends: {', '.join(failed)}[/]")
        raise typer.Exit(code=1)


@bench_app.command("server")
def server_command(
    target: str | None = typer.Option(None, help="HOST:PORT of a running server."),
    metrics: str | None = typer.Option(None, help="HOST:PORT of that server's metrics endpoint (batch sizes)."),
    http: str | None = typer.Option(None, help="HOST:PORT of that server's --http-port (for --modes http)."),
    model: list[Path] = typer.Option(
        [],
        "--model",
        help="Model directory: start `gamjeong serve` on it (repeat to compare servers); with --target, "
        "the directory that server serves, for the raw-predictor comparison.",
    ),
    backend: Runtime = typer.Option(Runtime.auto, help="--backend of the started server and of the raw run."),
    concurrencies: str | None = typer.Option(None, help="Comma-separated client counts [default: 1,16,64]."),
    modes: str | None = typer.Option(
        None, help="Comma-separated: unary, stream, chat, http (HTTP/JSON) [default: unary,stream,chat]."
    ),
    duration: float | None = typer.Option(None, min=0.1, help="Timed seconds per mode and concurrency [default: 10]."),
    stream_texts: int = typer.Option(32, min=1, help="Texts per ClassifyStream call."),
    data: Path | None = typer.Option(
        None, help="Labelled data file whose texts are sent (default: the shipped GoEmotions-Korean subset)."
    ),
    output: Path = typer.Option(
        Path("bench-results/server"), help="Folder for results.json, results.md, throughput.png."
    ),
    threads: int | None = typer.Option(None, min=1, help="Intra-op threads of the started server and the raw run."),
    max_batch_size: int | None = typer.Option(
        None, min=1, help="--max-batch-size of the started server (1: no batching)."
    ),
    max_wait_ms: float | None = typer.Option(None, min=0, help="--max-wait-ms of the started server."),
    grouping: str | None = typer.Option(None, help="--grouping of the started server: cost or fill."),
    intra_op_spinning: bool | None = typer.Option(
        None, "--intra-op-spinning/--no-intra-op-spinning", help="Spinning of the started server's intra-op threads."
    ),
    quick: bool = typer.Option(False, help="Concurrencies 1 and 4, one second each."),
    client_processes: int = typer.Option(
        1, min=1, help="Processes the load generator's clients are spread over (1: all in this process)."
    ),
    channels: int = typer.Option(1, min=1, help="gRPC channels (connections) per client process."),
    server_workers: int | None = typer.Option(
        None, min=1, help="--workers of the started server (passed only when given); with --echo, echo processes."
    ),
    echo: bool = typer.Option(
        False, help="Drive a server that runs no model (benchmarks/echo_server.py): the load generator alone."
    ),
) -> None:
    """The gRPC server end to end (unary, server streaming, chat) against the raw predictor on the same texts."""
    from pydantic import ValidationError

    from .report import print_server_results, write_server_results
    from .server_bench import ServerBenchConfig, quick_settings, run_server_benchmark

    given = {
        "concurrencies": _int_list(concurrencies, "--concurrencies"),
        "modes": _str_list(modes),
        "duration_s": duration,
    }
    explicit = {key for key, value in given.items() if value is not None}
    try:
        config = ServerBenchConfig(
            target=target,
            metrics=metrics,
            http=http,
            model=model,
            backend=backend,  # type: ignore[arg-type]
            stream_texts=stream_texts,
            data=data,
            output=output,
            threads=threads,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            grouping=grouping,
            intra_op_spinning=intra_op_spinning,
            quick=quick,
            client_processes=client_processes,
            channels=channels,
            server_workers=server_workers,
            echo=echo,
            **{key: value for key, value in given.items() if value is not None},
        )
    except ValidationError as exc:
        raise flag_error(exc) from None
    config = quick_settings(config, explicit)
    _run_and_report(config, run_server_benchmark, write_server_results, print_server_results)


@bench_app.command("gpu")
def gpu_command(
    device: str = typer.Option("cuda", help="cuda: the GPU check; cpu: the same steps on a tiny model (a test)."),
    model: Path | None = typer.Option(None, "--model", help="Trained model directory [default: random weights]."),
    output: Path = typer.Option(Path("bench-results/gpu"), help="Folder for the (at most 8) result files."),
    concurrencies: str | None = typer.Option(None, help="Comma-separated client counts [default: 1,16,64,256]."),
    duration: float | None = typer.Option(None, min=0.1, help="Timed seconds per server mode and concurrency [4]."),
    client_processes: int | None = typer.Option(None, min=1, help="Load generator processes [default: cores / 2]."),
    channels: int = typer.Option(2, min=1, help="gRPC channels per client process."),
    server_workers: int | None = typer.Option(None, min=1, help="--workers of the server (passed only when given)."),
    echo_processes: int | None = typer.Option(None, min=1, help="Echo server processes [default: cores / 2]."),
    max_batch_size: int | None = typer.Option(None, min=1, help="--max-batch-size of the server."),
    data: Path | None = typer.Option(
        None, help="Labelled data file whose texts are used (default: GoEmotions-Korean)."
    ),
) -> None:
    """The GPU check in one command: export fp16 O4 -> bench model -> bench server -> the load generator alone."""
    from pydantic import ValidationError
    from rich.console import Console

    from .gpu_check import GpuCheckConfig, cpu_settings, run_gpu_check, summary_markdown

    given: dict[str, Any] = {"concurrencies": _int_list(concurrencies, "--concurrencies"), "duration_s": duration}
    try:
        config = GpuCheckConfig(
            device=device,  # type: ignore[arg-type]
            model=model,
            output=output,
            client_processes=client_processes,
            channels=channels,
            server_workers=server_workers,
            echo_processes=echo_processes,
            max_batch_size=max_batch_size,
            data=data,
            **{key: value for key, value in given.items() if value is not None},
        )
    except ValidationError as exc:
        raise flag_error(exc) from None
    config = cpu_settings(config)
    err = Console(stderr=True)
    summary = run_gpu_check(config, progress=lambda message: err.print(f"[dim]{message}[/]"))
    Console(width=200).print(summary_markdown(summary), highlight=False, markup=False)
    Console().print(f"wrote {len(list(config.output.iterdir()))} files in {config.output}")
    if summary["failed_steps"]:
        err.print(f"[red]steps not done: {', '.join(summary['failed_steps'])}[/]")
        raise typer.Exit(code=1)


@bench_app.command("peers")
def peers_command(
    model: Path = typer.Option(..., "--model", help="Exported directory (int8 ONNX) that both servers serve."),
    concurrencies: str | None = typer.Option(None, help="Comma-separated client counts [default: 1,16,64]."),
    duration: float = typer.Option(10.0, min=0.1, help="Timed seconds per server, transport and concurrency."),
    warmup: float = typer.Option(1.0, min=0, help="Untimed seconds of the same load before each timed run."),
    data: Path | None = typer.Option(
        None, help="Labelled data file whose texts are sent (default: the shipped GoEmotions-Korean subset)."
    ),
    output: Path = typer.Option(Path("bench-results/peers"), help="Folder for results.json, results.md and logs."),
    infinity_venv: Path | None = typer.Option(
        None,
        help="Virtualenv for infinity-emb, created and installed on first use [default: ~/.cache/gamjeong/peers/infinity-venv].",
    ),
    agreement_texts: int = typer.Option(32, min=0, help="Texts both classify one at a time, answers compared."),
) -> None:
    """gamjeong (gRPC and HTTP) against infinity-emb (its optimum engine on the same ONNX file), the same load and texts."""
    from pydantic import ValidationError

    from .peers import PeersConfig, print_peers_results, run_peers_benchmark, write_peers_results

    try:
        config = PeersConfig(
            model=model,
            duration_s=duration,
            warmup_s=warmup,
            data=data,
            output=output,
            infinity_venv=infinity_venv,
            agreement_texts=agreement_texts,
            **({"concurrencies": _int_list(concurrencies, "--concurrencies")} if concurrencies else {}),
        )
    except ValidationError as exc:
        raise flag_error(exc) from None
    _run_and_report(config, run_peers_benchmark, write_peers_results, print_peers_results)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
