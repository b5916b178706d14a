"""Stage 1, data: which labelled texts quickstart trains and tests on.

- `--data`: the user's file or folder, split and cleaned by training's loaders.
- otherwise GoEmotions-Korean: its public download when reachable (the train split capped per class, dev and test as
  given), else the subset of its train split shipped in the package; plus two native Korean sources: KOTE comments
  (gamjeong.kote: its val file capped per class for training, its test file held out) and the built-in sample set
  (split by class). Machine-translated Reddit alone transfers poorly to native Korean, so all three go into training
  (`MIX` says how much of each; docs/native-korean.md says why), and the test is reported per source ("held-out
  sets") plus the native yardstick: KOTE's held-out comments and the samples' held-out share together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from gamjeong.errors import GamjeongError
from gamjeong.quickstart.plan import QuickstartConfig, TrainingBudget

if TYPE_CHECKING:
    import pandas as pd

    from gamjeong.quickstart.display import StageDisplay

DATA_DIR = "data"
HELDOUT_DIR = "heldout"  # under DATA_DIR: the test split of each source, for the quality stage
PER_CLASS_CAP = 2500  # the shipped subset's recipe, applied to a downloaded train split too
SAMPLE_FRACTIONS = (0.15, 0.15)  # validation and test share of the built-in sample set
NATIVE_YARDSTICK = "native yardstick"  # the held-out set of both native sources together


@dataclass(frozen=True)
class TrainingMix:
    """How much of each source the default (no --data) run trains on; chosen on the native yardstick."""

    goemotions_train_cap: int  # per class of GoEmotions-Korean's train split (the shipped subset holds <= 2,500)
    kote_train_cap: int  # per class, from KOTE's val file (0: KOTE not trained on); joy alone has ~1,500
    kote_validation: float  # share of those cut for validation
    kote_test_cap: int  # per class, from KOTE's test file: the held-out KOTE part of the yardstick


MIX = TrainingMix(goemotions_train_cap=PER_CLASS_CAP, kote_train_cap=200, kote_validation=0.1, kote_test_cap=300)


def _subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most `limit` rows, stratified by label (each class keeps its share, at least one row)."""
    if limit is None or len(frame) <= limit:
        return frame
    import pandas as pd

    fraction = limit / len(frame)
    parts = [
        group.sample(n=max(1, round(len(group) * fraction)), random_state=seed)
        for _, group in frame.groupby("label", sort=True)
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _capped_per_class(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    import pandas as pd

    parts = [g.sample(n=min(len(g), cap), random_state=seed) for _, g in frame.groupby("label", sort=True)]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _goemotions(config: QuickstartConfig, ui: StageDisplay) -> tuple[dict[str, pd.DataFrame], str]:
    """train / validation / test of GoEmotions-Korean: downloaded when possible, else the shipped subset."""
    from gamjeong.goemotions_subset import ORIGIN, load_goemotions_subset
    from gamjeong.training.data import download_goemotions_korean, load_splits, stratified_split

    if not config.offline:
        try:
            with ui.working("downloading GoEmotions-Korean from GitHub"):
                folder = download_goemotions_korean(config.output / "downloads")
            splits = load_splits(folder, seed=config.seed)
            if splits.test is not None:
                train = _capped_per_class(splits.train, MIX.goemotions_train_cap, config.seed)
                return {"train": train, "validation": splits.validation, "test": splits.test}, f"{ORIGIN}, downloaded"
        except GamjeongError:
            ui.say("GoEmotions-Korean could not be downloaded (no network?): using the subset shipped with gamjeong.")
    subset = load_goemotions_subset()
    train, (validation, test) = stratified_split(subset, (0.05, 0.1), config.seed)
    train = _capped_per_class(train, MIX.goemotions_train_cap, config.seed)
    return {"train": train, "validation": validation, "test": test}, f"{ORIGIN}, the subset shipped with gamjeong"


def _kote(seed: int, mix: TrainingMix = MIX) -> tuple[dict[str, pd.DataFrame], str]:
    """KOTE's val file capped per class (train and validation) and its test file capped per class (held out)."""
    from gamjeong.kote import ORIGIN, load_kote
    from gamjeong.training.data import stratified_split

    test = _capped_per_class(load_kote("test"), mix.kote_test_cap, seed)
    if mix.kote_train_cap <= 0:
        return {"test": test}, f"{ORIGIN}; held out only"
    train, (validation,) = stratified_split(
        _capped_per_class(load_kote("val"), mix.kote_train_cap, seed), (mix.kote_validation,), seed
    )
    note = f"{ORIGIN}; trained on at most {mix.kote_train_cap} per class of its val file, its test file held out"
    return {"train": train, "validation": validation, "test": test}, note


def _sources(config: QuickstartConfig, ui: StageDisplay) -> dict[str, tuple[dict[str, pd.DataFrame], str]]:
    """Each source's splits and a line saying where it came from."""
    from gamjeong.samples import load_samples
    from gamjeong.training.data import load_splits, stratified_split

    if config.data is not None:
        splits = load_splits(config.data.expanduser(), seed=config.seed)
        return {"your data": (splits.named(), f"your data ({config.data}); splits: {splits.split_note}")}
    samples = load_samples()
    samples_train, (samples_validation, samples_test) = stratified_split(samples, SAMPLE_FRACTIONS, config.seed)
    return {
        "GoEmotions-Korean": _goemotions(config, ui),
        "KOTE": _kote(config.seed),
        "native samples": (
            {"train": samples_train, "validation": samples_validation, "test": samples_test},
            f"the built-in Korean sample set ({len(samples):,} native sentences written for gamjeong)",
        ),
    }


def prepare_data(config: QuickstartConfig, budget: TrainingBudget, out: Path, ui: StageDisplay) -> dict[str, Any]:
    """Pick the sources, cap them to the budget, write out/data/{train,validation,test}.csv and the held-out sets."""
    import pandas as pd

    from gamjeong.datafiles import write_split_csv
    from gamjeong.labels import LABEL_NAMES

    sources = _sources(config, ui)
    limits = {"train": budget.max_train_rows, "validation": budget.max_eval_rows, "test": budget.max_test_rows}
    used = {
        name: {
            split: _subsample(frame, limits[split], config.seed) for split, frame in frames.items() if frame is not None
        }
        for name, (frames, _) in sources.items()
    }
    # Texts repeat within a source (and may across sources): a held-out text must never be trained or validated on.
    seen: set[str] = set()
    for split in ("train", "validation", "test"):
        for frames in used.values():
            if split in frames:
                frames[split] = frames[split][~frames[split]["text"].isin(seen)].drop_duplicates("text")
        seen |= {text for frames in used.values() if split in frames for text in frames[split]["text"]}
    data_dir = out / DATA_DIR
    heldout: dict[str, str] = {}
    table = Table(title="data", title_justify="left")
    for column in ("source", "split", "rows", *LABEL_NAMES):
        table.add_column(column, justify="left" if column in ("source", "split") else "right")
    for name, frames in used.items():
        ui.say(f"{name}: {escape(sources[name][1])}")
        for split, frame in frames.items():
            per_class = frame["label"].value_counts()
            table.add_row(name, split, str(len(frame)), *(str(per_class.get(i, 0)) for i in range(len(LABEL_NAMES))))
        if "test" in frames and not frames["test"].empty:
            path = data_dir / HELDOUT_DIR / f"{name.replace(' ', '-').lower()}.csv"
            write_split_csv(frames["test"], path)
            heldout[name] = str(path)
    native = [pd.read_csv(heldout[name]) for name in ("KOTE", "native samples") if name in heldout]
    if len(native) == 2:  # the default sources: both native held-out sets as one yardstick
        path = data_dir / HELDOUT_DIR / f"{NATIVE_YARDSTICK.replace(' ', '-')}.csv"
        pd.concat(native, ignore_index=True).to_csv(path, index=False, encoding="utf-8")
        heldout[NATIVE_YARDSTICK] = str(path)
    rows = {}
    for split in ("train", "validation", "test"):
        parts = [frames[split] for frames in used.values() if split in frames and not frames[split].empty]
        if parts:
            frame = pd.concat(parts, ignore_index=True)
            write_split_csv(frame, data_dir / f"{split}.csv")
            rows[split] = len(frame)
    ui.console.print(table)
    return {
        "dir": str(data_dir),
        "sources": {name: origin for name, (_, origin) in sources.items()},
        "rows": rows,
        "heldout": heldout,
    }
