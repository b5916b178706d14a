"""`gamjeong quickstart`: the whole pipeline in one command, on whatever this machine has.

data -> train -> export (int8 ONNX, parity gate) -> serve and call over gRPC -> PyTorch vs ONNX latency -> summary.
Offline (no Hugging Face Hub, no GitHub) it still runs end to end: the built-in Korean sample set is the data and a
randomly initialised model of the base model's architecture, with a tokenizer trained on the data, is the base. Such a
model is barely trained, so every prediction it prints is marked as coming from an untrained model; the files, the
server and the timings are nonetheless real.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gamjeong.errors import GamjeongError
from gamjeong.modeling import DEFAULT_BASE_MODEL

Budget = Literal["auto", "tiny", "cpu", "gpu"]
SUMMARY_FILE = "quickstart.json"
STAGE_COUNT = 6
UNTRAINED_MARK = "untrained model"
# What quickstart writes under --output; a re-run replaces exactly these.
DATA_DIR, BASE_MODEL_DIR, MODEL_DIR, EXPORT_DIR, BENCH_DIR, CACHE_DIR = (
    "data",
    "base-model",
    "model",
    "onnx-int8",
    "bench",
    "downloads",
)
OWN_ENTRIES = (DATA_DIR, BASE_MODEL_DIR, MODEL_DIR, EXPORT_DIR, BENCH_DIR, SUMMARY_FILE)

# Sentences sent to the server: one per emotion in everyday registers (none of them is in the sample set).
DEMO_TEXTS = (
    "드디어 합격했어요!! 너무 기뻐요 ㅎㅎ",
    "오늘 하루 종일 혼자라서 외롭고 슬프다 ㅠㅠ",
    "주문한 지 3주째인데 아직도 안 오네요. 정말 화가 납니다",
    "밤에 누가 현관문을 두드려서 너무 무서워",
    "헐 대박 이게 진짜야? 전혀 몰랐어",
    "식당 국에서 벌레가 나왔어 진짜 역겨워",
    "회의 자료는 공유 폴더에 올려 두었습니다",
)


@dataclass(frozen=True)
class TrainingBudget:
    """How much training a budget buys: steps, lengths, and how much of a large data set is used."""

    name: str
    max_steps: int | None  # None: train for `epochs`
    epochs: float
    batch_size: int
    max_length: int
    max_train_rows: int | None  # larger data is subsampled (stratified, seeded) to this many training rows
    max_eval_rows: int | None  # ... and validation / test rows
    real_size: bool  # size of the randomly initialised model used when the base model cannot be had
    vocab_size: int  # of the tokenizer trained on the data in that case
    learning_rate: float
    enforce_parity_gate: bool  # a short run leaves near-ties that int8 flips: there the gate is reported, not enforced
    freeze_embeddings: bool  # fixed word embeddings: about half the work per step for large-vocabulary encoders
    about: str


BUDGETS: dict[str, TrainingBudget] = {
    "tiny": TrainingBudget(
        name="tiny",
        max_steps=8,
        epochs=1.0,
        batch_size=16,
        max_length=32,
        max_train_rows=2000,
        max_eval_rows=200,
        real_size=False,
        vocab_size=2000,
        learning_rate=1e-3,
        enforce_parity_gate=False,
        freeze_embeddings=False,
        about="a few steps of a tiny model (tests, smoke runs)",
    ),
    "cpu": TrainingBudget(
        name="cpu",
        max_steps=30,
        epochs=1.0,
        batch_size=16,
        max_length=64,
        max_train_rows=4000,
        max_eval_rows=300,
        real_size=True,
        vocab_size=8000,
        learning_rate=5e-5,
        enforce_parity_gate=False,
        freeze_embeddings=True,
        about="a short fine-tune that fits a few CPU minutes",
    ),
    "gpu": TrainingBudget(
        name="gpu",
        max_steps=None,
        epochs=3.0,
        batch_size=32,
        max_length=128,
        max_train_rows=None,
        max_eval_rows=None,
        real_size=True,
        vocab_size=30000,
        learning_rate=5e-5,
        enforce_parity_gate=True,
        freeze_embeddings=False,
        about="a full fine-tune (3 epochs)",
    ),
}


class QuickstartConfig(BaseModel):
    """Settings of one `gamjeong quickstart` run."""

    model_config = ConfigDict(frozen=True)

    output: Path = Field(Path("runs/quickstart"), description="Where every stage writes its directory.")
    data: Path | None = Field(None, description="Labelled data file or folder; default: GoEmotions-Korean.")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Hugging Face id or local directory to fine-tune.")
    budget: Budget = Field("auto", description="auto: gpu when CUDA is available, else cpu.")
    offline: bool = Field(False, description="Download nothing: the built-in samples and a random base if needed.")
    serve: bool = Field(True, description="Start the gRPC server and call it (stage 4).")
    bench: bool = Field(True, description="Measure PyTorch vs ONNX latency (stage 5).")
    seed: int = 42

    def resolved_budget(self) -> TrainingBudget:
        if self.budget != "auto":
            return BUDGETS[self.budget]
        import torch

        return BUDGETS["gpu" if torch.cuda.is_available() else "cpu"]


# --- display --------------------------------------------------------------------------------------------------------
class StageDisplay:
    """A numbered header per stage, a spinner while it works, and its wall time when it is done."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.timings: dict[str, float] = {}
        self.skipped: dict[str, str] = {}
        self._number = 0

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[StageDisplay]:
        self._number += 1
        self.console.rule(f"[bold cyan]{self._number}/{STAGE_COUNT}  {title}", align="left")
        started = time.perf_counter()
        yield self
        self.timings[key] = round(time.perf_counter() - started, 2)
        self.console.print(f"[green]✓[/] {title} done in {self.timings[key]:.1f} s")

    def skip(self, key: str, title: str, why: str) -> None:
        self._number += 1
        self.console.rule(f"[bold cyan]{self._number}/{STAGE_COUNT}  {title}", align="left")
        self.skipped[key] = why
        self.console.print(f"[yellow]skipped:[/] {why}")

    def final(self, title: str) -> None:
        self._number += 1
        self.console.rule(f"[bold cyan]{self._number}/{STAGE_COUNT}  {title}", align="left")

    def say(self, message: str) -> None:
        self.console.print(f"  {message}", highlight=False)

    @contextmanager
    def working(self, message: str) -> Iterator[Any]:
        with self.console.status(f"[cyan]{message}", spinner="dots") as status:
            yield status


# --- stage 1: data --------------------------------------------------------------------------------------------------
def _subsample(frame, limit: int | None, seed: int):
    """At most `limit` rows, stratified by label (each class keeps its share, at least one row)."""
    if limit is None or len(frame) <= limit:
        return frame
    fraction = limit / len(frame)
    parts = [
        group.sample(n=max(1, round(len(group) * fraction)), random_state=seed)
        for _, group in frame.groupby("label", sort=True)
    ]
    import pandas as pd

    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def prepare_data(config: QuickstartConfig, budget: TrainingBudget, out: Path, ui: StageDisplay) -> dict[str, Any]:
    """Pick the data source, clean and split it (training's loaders), cap it to the budget, write it to out/data."""
    from gamjeong.labels import LABEL_NAMES
    from gamjeong.samples import samples_path
    from gamjeong.training.data import download_goemotions_korean, load_splits, write_split_csv

    if config.data is not None:
        source, origin = config.data.expanduser(), f"your data ({config.data})"
    elif config.offline:
        source, origin = samples_path(), "the built-in Korean sample set (offline mode)"
        ui.say("Offline mode: using the built-in Korean sample set (490 sentences written for gamjeong).")
    else:
        try:
            with ui.working("downloading GoEmotions-Korean from GitHub"):
                source = download_goemotions_korean(config.output / CACHE_DIR)
            origin = "GoEmotions-Korean (monologg/GoEmotions-Korean, Apache-2.0), mapped to the seven emotions"
        except GamjeongError:
            source, origin = (
                samples_path(),
                "the built-in Korean sample set (GoEmotions-Korean could not be downloaded)",
            )
            ui.say(
                "GoEmotions-Korean could not be downloaded (no network?), so the built-in Korean sample set "
                "(490 sentences written for gamjeong) is used instead."
            )
    with ui.working(f"reading {source}"):
        splits = load_splits(source, seed=config.seed)
    frames = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    limits = {"train": budget.max_train_rows, "validation": budget.max_eval_rows, "test": budget.max_eval_rows}
    used: dict[str, Any] = {}
    data_dir = out / DATA_DIR
    for split, frame in frames.items():
        if frame is None or frame.empty:
            continue
        used[split] = _subsample(frame, limits[split], config.seed)
        if len(used[split]) < len(frame):
            ui.say(f"{split}: {len(used[split])} of {len(frame)} rows (stratified) for the {budget.name} budget")
        write_split_csv(used[split], data_dir / f"{split}.csv")
    table = Table(title=f"data: {origin}", title_justify="left")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for name in LABEL_NAMES:
        table.add_column(name, justify="right")
    for split, frame in used.items():
        per_class = frame["label"].value_counts()
        table.add_row(split, str(len(frame)), *(str(per_class.get(i, 0)) for i in range(len(LABEL_NAMES))))
    ui.console.print(table)
    ui.say(f"splits: {escape(splits.split_note)}")
    return {"source": str(source), "origin": origin, "dir": str(data_dir), "rows": {k: len(v) for k, v in used.items()}}


# --- stage 2: train ---------------------------------------------------------------------------------------------------
def base_model_available(config: QuickstartConfig) -> tuple[bool, str]:
    """Whether the base model can be loaded, and why not; checked quickly so offline runs do not sit in retries."""
    from gamjeong.modeling import hub_model_unavailable_reason

    if config.offline and not Path(config.base_model).expanduser().exists():
        return False, "offline mode"
    why = hub_model_unavailable_reason(config.base_model)
    return why is None, why or ""


def build_random_base(
    config: QuickstartConfig, budget: TrainingBudget, data_dir: Path, destination: Path, ui: StageDisplay
) -> Path:
    """A randomly initialised DistilBERT (real size, or tiny for the tiny budget) and a WordPiece tokenizer trained
    on the training split, saved as a base-model directory that training loads like any other."""
    import pandas as pd

    from gamjeong.modeling import build_random_model, train_wordpiece_tokenizer

    texts = pd.read_csv(data_dir / "train.csv")["text"].astype(str).tolist()
    with ui.working("training a WordPiece tokenizer on the data and building a random-weight model"):
        tokenizer = train_wordpiece_tokenizer(texts, vocab_size=budget.vocab_size, model_max_length=budget.max_length)
        model = build_random_model(tokenizer, real_size=budget.real_size, seed=config.seed)
        destination.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(destination)
        tokenizer.save_pretrained(destination)
    size = "real-size distilbert-base-multilingual-cased architecture" if budget.real_size else "tiny DistilBERT"
    params = sum(p.numel() for p in model.parameters())
    ui.say(f"random base: {size}, {params / 1e6:.1f} M parameters, vocabulary {len(tokenizer)}")
    return destination


def train_model(
    config: QuickstartConfig, budget: TrainingBudget, data_dir: Path, out: Path, ui: StageDisplay
) -> dict[str, Any]:
    from gamjeong.artifacts import METRICS_FILE
    from gamjeong.training.train import TrainConfig, train

    available, why = base_model_available(config)
    untrained = not available
    base: str | Path = config.base_model
    if untrained:
        architecture = (
            f"the {DEFAULT_BASE_MODEL} architecture"
            if budget.real_size
            else f"a tiny DistilBERT architecture ({budget.name} budget)"
        )
        ui.console.print(
            f"[bold yellow]The base model '{escape(config.base_model)}' cannot be downloaded ({why}), so quickstart "
            f"continues with a randomly initialised model of {architecture} and a tokenizer trained "
            "on the data: its predictions mean nothing, but the pipeline, the server and the timings are real.[/]"
        )
        base = build_random_base(config, budget, data_dir, out / BASE_MODEL_DIR, ui)
    steps = f"{budget.epochs:g} epochs" if budget.max_steps is None else f"{budget.max_steps} steps"
    ui.say(
        f"budget {budget.name}: {budget.about} - {steps}, batch {budget.batch_size}, max_length {budget.max_length}"
        + (", word embeddings frozen" if budget.freeze_embeddings else "")
    )
    train_config = TrainConfig(
        data=data_dir,
        output=out / MODEL_DIR,
        base_model=str(base),
        epochs=budget.epochs,
        max_steps=budget.max_steps,
        # A short run is evaluated (and checkpointed) once, at its end: checkpoints of a real-size model are slow.
        eval_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        max_length=budget.max_length,
        freeze_embeddings=budget.freeze_embeddings,
        seed=config.seed,
        overwrite=True,
    )
    model_dir = Path(train(train_config))
    metrics = json.loads((model_dir / METRICS_FILE).read_text(encoding="utf-8"))
    ui.say(
        f"{metrics.get('split', 'test')} accuracy {metrics.get('accuracy', float('nan')):.3f}, macro-F1 {metrics.get('macro_f1', float('nan')):.3f}"
        + (f"  [yellow]({UNTRAINED_MARK}: random base, chance level expected)[/]" if untrained else "")
    )
    return {
        "dir": str(model_dir),
        "base_model": str(base),
        "untrained": untrained,
        "why_untrained": why or None,
        "budget": asdict(budget),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
    }


# --- stage 3: export ------------------------------------------------------------------------------------------------
def export_stage(model_dir: Path, out: Path, not_enforced_because: str | None, ui: StageDisplay) -> dict[str, Any]:
    """int8 ONNX through the export module, with its parity gate.

    The gate stops the run unless `not_enforced_because` says why it cannot be meaningful: an untrained model, or a
    short training budget, leaves the top two probabilities nearly tied, and int8 rounding flips such near-ties. Then
    the gate is still measured, printed and recorded (the manifest marks a failed one as forced), but does not stop
    the demo; `gamjeong export` on a properly trained model enforces it.
    """
    from gamjeong.artifacts import MANIFEST_FILE, ONNX_MODEL_FILE, PARITY_FILE
    from gamjeong.export.exporter import ExportConfig, export_model
    from gamjeong.export.targets import detect_target

    force = not_enforced_because is not None
    # int8 is for CPUs: with onnxruntime-gpu installed, `--target auto` would mean CUDA, so name this CPU's target.
    cpu_target = detect_target(cuda_present=False).name
    export_config = ExportConfig(
        model=model_dir, output=out / EXPORT_DIR, quantize="int8", target=cpu_target, force=force
    )
    with ui.working("exporting to ONNX and quantising to int8 with Optimum"):
        export_dir = export_model(export_config, report=lambda message: ui.say(escape(message)))
    parity = json.loads((export_dir / PARITY_FILE).read_text(encoding="utf-8"))
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    size_mb = (export_dir / ONNX_MODEL_FILE).stat().st_size / 1e6
    gate = "passed" if parity.get("passed") else f"failed (not enforced: {not_enforced_because})"
    if not parity.get("passed") and not_enforced_because != UNTRAINED_MARK:
        ui.console.print(
            "[bold yellow]The int8 model disagrees with PyTorch where the briefly trained model is undecided; "
            "quickstart publishes it anyway (manifest.json marks it forced). For a model to deploy, train longer "
            "(--budget gpu, or `gamjeong train`) and run `gamjeong export`, which enforces the gate.[/]"
        )
    ui.say(
        f"parity gate {gate}: argmax agreement {parity['argmax_agreement']:.2%} on {parity['texts']} texts "
        f"(threshold {parity['threshold']:.0%}), max |Δp| {parity['max_abs_prob_diff']:.4f}; model.onnx {size_mb:.1f} MB"
    )
    return {
        "dir": str(export_dir),
        "onnx_mb": round(size_mb, 2),
        "quantization": manifest.get("quantization"),
        "parity": {k: parity.get(k) for k in ("texts", "argmax_agreement", "max_abs_prob_diff", "threshold", "passed")},
        "gate_enforced": not force,
        "gate_not_enforced_because": not_enforced_because,
    }


# --- stage 4: serve and call ------------------------------------------------------------------------------------------
class BackgroundServer:
    """The gRPC server (gamjeong.server) on its own event loop in a background thread, on a free local port."""

    def __init__(self, model_dir: Path) -> None:
        from gamjeong.server.settings import load_settings

        # The int8 model is served where it was made for: the CPU (even when onnxruntime-gpu is installed).
        self.settings = load_settings(
            model=model_dir,
            device="cpu",
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            log_format="text",
            log_level="warning",
        )
        self.port: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gamjeong-quickstart-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from gamjeong.server.app import GamjeongServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = GamjeongServer(self.settings)
        try:
            await server.start()
            self.port = server.port
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await server.stop(0)
            return
        self._ready.set()
        await self._stop.wait()
        await server.stop(5.0)

    def start(self, timeout_s: float = 300.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise GamjeongError(f"The gRPC server did not become ready within {timeout_s:.0f} s.")
        if self._error is not None:
            raise self._error
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def _prediction_caveat(untrained: bool, budget: TrainingBudget) -> str | None:
    """What to print beside each prediction of a model that is not a real fine-tune."""
    if untrained:
        return UNTRAINED_MARK
    if budget.max_steps is not None:
        return f"briefly trained: {budget.max_steps} steps"
    return None


def call_server(target: str, caveat: str | None, ui: StageDisplay) -> dict[str, Any]:
    """Classify, ClassifyStream and ClassifyChat through the Python client, printing what comes back.

    `caveat` (e.g. "untrained model") is printed with every prediction when the model is not a real fine-tune.
    """
    from gamjeong.clients import ChatMessage, EmotionClient
    from gamjeong.samples import sample_texts

    mark = f" [yellow]({caveat})[/]" if caveat else ""
    with EmotionClient(target, timeout=60.0) as client:
        info = client.model_info()
        ui.say(
            f"server at {target}: {info.backend} on {info.execution_provider}, quantisation {info.quantization}, "
            f"max input {info.max_input_length} tokens"
        )
        results = client.classify(list(DEMO_TEXTS))
        title = "Classify (unary)" + (f": predictions of an {caveat}" if caveat == UNTRAINED_MARK else "")
        table = Table(title=title, title_justify="left")
        table.add_column("text", ratio=3)
        table.add_column("emotion", ratio=2)
        table.add_column("runner-up", ratio=1)
        if caveat:
            table.add_column("model", ratio=1)
        for text, result in zip(DEMO_TEXTS, results, strict=True):
            runner_up = sorted(result.scores.items(), key=lambda item: -item[1])[1:2]
            row = [
                escape(text),
                f"{result.label} {result.label_ko} {result.score:.2f}",
                " ".join(f"{name} {score:.2f}" for name, score in runner_up),
            ]
            table.add_row(*row, *([caveat] if caveat else []))
        ui.console.print(table)

        bulk = sample_texts(100, seed=7)
        streamed = list(client.classify_stream(bulk))
        counts: dict[str, int] = {}
        for result in streamed:
            counts[result.label] = counts.get(result.label, 0) + 1
        spread = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda c: -c[1]))
        ui.say(
            f"ClassifyStream (server streaming): {len(streamed)} of {len(bulk)} results back in order: {spread}{mark}"
        )

        feed = [ChatMessage(id=f"m{i}", text=text, conversation_id="demo") for i, text in enumerate(DEMO_TEXTS[:4])]
        ui.say("ClassifyChat (bidirectional streaming), replies as they arrive:")
        replies = []
        for reply in client.chat(feed):
            replies.append(reply)
            text = next(m.text for m in feed if m.id == reply.id)
            answer = (
                f"{reply.result.label} {reply.result.label_ko} {reply.result.score:.2f}"
                if reply.result is not None
                else f"error {reply.error_code}: {reply.error_message}"
            )
            ui.say(f"  {escape(f'[{reply.id}]')} {escape(text)} -> {escape(answer)}{mark}")
    return {
        "target": target,
        "model_info": {"backend": info.backend, "provider": info.execution_provider, "quantization": info.quantization},
        "classify": [
            {"text": t, "label": r.label, "score": round(r.score, 4), "caveat": caveat}
            for t, r in zip(DEMO_TEXTS, results, strict=True)
        ],
        "stream_results": len(streamed),
        "stream_texts": len(bulk),
        "chat_replies": [{"id": r.id, "ok": r.ok, "label": r.result.label if r.result else None} for r in replies],
    }


# --- stage 5: latency ----------------------------------------------------------------------------------------------
def bench_stage(model_dir: Path, export_dir: Path, budget: TrainingBudget, out: Path, ui: StageDisplay) -> dict:
    """PyTorch fp32 vs ONNX int8 through the benchmark module (the same predictor interface as the server)."""
    from gamjeong.benchmarks.model_bench import ModelBenchConfig, run_model_benchmark
    from gamjeong.benchmarks.report import write_model_results

    bench_config = ModelBenchConfig(
        model=model_dir,
        onnx=[export_dir],
        backends=["pytorch-fp32", "onnx-int8"],
        batch_sizes=[1, 8],
        seq_lengths=[min(32, budget.max_length)],
        iterations=10,
        warmup=2,
        min_iterations=3,
        max_cell_seconds=15.0,
        isolation="inprocess",  # one process: no second start-up of torch per backend
        agreement_texts=64,
        output=out / BENCH_DIR,
    )
    with ui.working("measuring PyTorch fp32 and ONNX Runtime int8") as status:
        results = run_model_benchmark(bench_config, progress=lambda message: status.update(f"[cyan]{escape(message)}"))
    write_model_results(results, out / BENCH_DIR)
    table = Table(title="latency per batch, tokenisation included (ms)", title_justify="left")
    for column in ("backend", "batch", "tokens", "p50", "p95", "texts/s"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in results["rows"]:
        table.add_row(
            row["backend"],
            str(row["batch_size"]),
            str(row["seq_len"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['texts_per_s']:.0f}",
        )
    ui.console.print(table)
    by_cell: dict[tuple[int, int], dict[str, float]] = {}
    for row in results["rows"]:
        by_cell.setdefault((row["batch_size"], row["seq_len"]), {})[row["backend"].removesuffix("-cuda")] = row[
            "p50_ms"
        ]
    for (batch, seq_len), cell in sorted(by_cell.items()):
        if "pytorch-fp32" in cell and "onnx-int8" in cell and cell["onnx-int8"] > 0:
            speedup = cell["pytorch-fp32"] / cell["onnx-int8"]
            if speedup >= 1.1:
                verdict = f"ONNX int8 is {speedup:.1f}x faster than PyTorch fp32"
            elif speedup <= 0.9:
                verdict = f"PyTorch fp32 is {1 / speedup:.1f}x faster than ONNX int8"
            else:
                verdict = "ONNX int8 and PyTorch fp32 are about as fast"
            ui.say(f"batch {batch}, {seq_len} tokens (p50): {verdict}")
    for backend in results["backends"]:
        if backend.get("status") != "ok":
            ui.say(f"[yellow]{backend['name']}: {backend.get('status')} ({backend.get('reason')})[/]")
    ui.say("(timings on a shared machine are noisy; `gamjeong bench model` runs the full grid)")
    return {"dir": str(out / BENCH_DIR), "rows": results["rows"]}


# --- stage 6: summary -----------------------------------------------------------------------------------------------
def _shown(path: str | Path | None) -> str | None:
    """A path as short as it can be said: relative to the working directory when it lies inside it."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def print_summary(summary: dict[str, Any], out: Path, ui: StageDisplay) -> None:
    stages = summary["stages"]
    table = Table(title="written", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("where")
    rows = [
        ("data used", stages.get("data", {}).get("dir")),
        (
            "random base model",
            stages.get("train", {}).get("base_model") if stages.get("train", {}).get("untrained") else None,
        ),
        ("trained model (PyTorch)", stages.get("train", {}).get("dir")),
        ("exported model (ONNX int8)", stages.get("export", {}).get("dir")),
        ("latency results", stages.get("bench", {}).get("dir")),
        ("this run's summary", str(out / SUMMARY_FILE)),
    ]
    for what, where in rows:
        if where:
            table.add_row(what, escape(_shown(where) or ""))
    ui.console.print(table)
    export_dir = _shown(stages.get("export", {}).get("dir"))
    model_dir = _shown(stages.get("train", {}).get("dir"))
    commands = []
    if export_dir:
        commands += [
            ("serve it", f"gamjeong serve --model {export_dir} --port 50051"),
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
    train = stages.get("train", {})
    if not train.get("untrained") and train.get("budget", {}).get("max_steps") is not None:
        ui.console.print(
            f"[yellow]The {train['budget']['name']} budget trains {train['budget']['max_steps']} steps: enough to run "
            f"every stage, not to learn the emotions (macro-F1 {train.get('macro_f1', 0):.2f}). For real predictions "
            "train longer: --budget gpu on a GPU, or `gamjeong train` with more epochs.[/]"
        )
    if train.get("untrained"):
        ui.console.print(
            f"[yellow]Every prediction above came from an {UNTRAINED_MARK} (random weights, a few training steps): "
            "pass --base-model with a pretrained model directory, and real data with --data, for real predictions.[/]"
        )


# --- the whole run --------------------------------------------------------------------------------------------------
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
    with ui.stage("data", "Data"):
        summary["stages"]["data"] = prepare_data(config, budget, out, ui)
    with ui.stage("train", "Train"):
        summary["stages"]["train"] = train_model(config, budget, out / DATA_DIR, out, ui)

    train = summary["stages"]["train"]
    model_dir, untrained = Path(train["dir"]), bool(train["untrained"])
    with ui.stage("export", "Export to int8 ONNX (parity gate)"):
        if untrained:
            not_enforced_because: str | None = UNTRAINED_MARK
        elif not budget.enforce_parity_gate:
            not_enforced_because = f"the short {budget.name} budget leaves the model's top two emotions nearly tied"
        else:
            not_enforced_because = None
        summary["stages"]["export"] = export_stage(model_dir, out, not_enforced_because, ui)
    export_dir = Path(summary["stages"]["export"]["dir"])
    if config.serve:
        with ui.stage("serve", "gRPC server: Classify, ClassifyStream, ClassifyChat"):
            server = BackgroundServer(export_dir)
            try:
                with ui.working("starting the gRPC server (loading and warming up the model)"):
                    target = server.start()
                summary["stages"]["serve"] = call_server(target, _prediction_caveat(untrained, budget), ui)
            finally:
                server.stop()
            ui.say(f"server on {target} stopped")
    else:
        ui.skip("serve", "gRPC server", "--skip-server was given")
    if config.bench:
        with ui.stage("bench", "Latency: PyTorch vs ONNX"):
            summary["stages"]["bench"] = bench_stage(model_dir, export_dir, budget, out, ui)
    else:
        ui.skip("bench", "Latency: PyTorch vs ONNX", "--skip-bench was given")

    summary["untrained"] = untrained


def run_quickstart(config: QuickstartConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage; returns (and writes to quickstart.json) what each stage produced."""
    console = console or Console()
    ui = StageDisplay(console)
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
    summary["status"] = "complete"
    summary["timings_s"] = ui.timings
    summary["skipped"] = ui.skipped
    summary["total_s"] = round(time.perf_counter() - started, 2)
    _write_summary(out, summary)
    ui.final("Summary")
    print_summary(summary, out, ui)
    ui.say(f"all stages in {summary['total_s']:.0f} s")
    return summary


def quickstart_command(
    output: Path = typer.Option(Path("runs/quickstart"), "--output", "-o", help="Directory for every stage's output."),
    data: Path = typer.Option(
        None, "--data", help="Labelled data file or folder (default: GoEmotions-Korean, offline the built-in samples)."
    ),
    base_model: str = typer.Option(DEFAULT_BASE_MODEL, "--base-model", help="Hugging Face id or local directory."),
    budget: str = typer.Option(
        "auto",
        "--budget",
        help="How much training: tiny (a tiny model, 8 steps: smoke test), cpu (30 steps at max_length 64, a few "
        "minutes), gpu (3 epochs at max_length 128), auto (gpu when CUDA is available, else cpu).",
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Download nothing (also implied by HF_HUB_OFFLINE=1 for the base model)."
    ),
    skip_server: bool = typer.Option(False, "--skip-server", help="Do not start the gRPC server (stage 4)."),
    skip_bench: bool = typer.Option(False, "--skip-bench", help="Do not measure latency (stage 5)."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """The main job in one command: data, train, export to int8 ONNX, serve over gRPC and call it, benchmark.

    Offline it uses the built-in Korean sample set and, when the base model cannot be downloaded, a random-weight model of its architecture: its predictions are marked as untrained; the files, the server and the timings are real. Everything goes under --output; a re-run replaces the previous run's results there.
    """
    if budget not in ("auto", *BUDGETS):
        raise GamjeongError(f"Unknown --budget '{budget}'; choose auto, {', '.join(BUDGETS)}.")
    config = QuickstartConfig(
        output=output,
        data=data,
        base_model=base_model,
        budget=budget,  # type: ignore[arg-type]
        offline=offline,
        serve=not skip_server,
        bench=not skip_bench,
        seed=seed,
    )
    run_quickstart(config)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart_command)
