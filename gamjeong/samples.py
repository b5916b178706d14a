"""The built-in Korean sample set: 1,231 sentences written for gamjeong, 166-191 per emotion (resources/SAMPLES.md).

It is the offline demo data of `gamjeong quickstart`, a fixture for tests, and the default texts for parity checks and
benchmarks. Labels are stored as English names in the CSV and returned as class ids.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from gamjeong.labels import NUM_LABELS, to_label_ids

SAMPLES_RESOURCE = "resources/samples.csv"


def samples_path() -> Path:
    """Path of the sample CSV (header `text,label`, English label names), readable by every data loader."""
    return Path(str(resources.files("gamjeong").joinpath(SAMPLES_RESOURCE)))


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    frame = pd.read_csv(samples_path(), encoding="utf-8", dtype={"text": str, "label": str})
    return pd.DataFrame({"text": frame["text"].astype(str), "label": to_label_ids(frame["label"])})


def load_samples() -> pd.DataFrame:
    """The sample set as a DataFrame with columns `text` (str) and `label` (int class id), in file order."""
    return _load().copy()


def sample_texts(n: int | None = None, *, seed: int = 0) -> list[str]:
    """`n` sample sentences (all when None) taken round-robin over the classes, so even a few cover every emotion.

    The order within each class is shuffled with `seed`, so the same arguments always give the same texts.
    """
    frame = _load()
    rng = random.Random(seed)
    per_class: list[list[str]] = []
    for label_id in range(NUM_LABELS):
        texts = frame.loc[frame["label"] == label_id, "text"].tolist()
        rng.shuffle(texts)
        per_class.append(texts)
    interleaved = [texts[i] for i in range(max(map(len, per_class))) for texts in per_class if i < len(texts)]
    if n is None:
        return interleaved
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return interleaved[:n]
