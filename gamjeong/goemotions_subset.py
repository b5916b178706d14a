"""The compact GoEmotions-Korean subset shipped with the package (resources/GOEMOTIONS.md says how it was drawn).

13,365 rows of GoEmotions-Korean's *train* split, mapped to the seven emotions and capped at 2,500 per class (fear and
disgust keep all of theirs), so `gamjeong quickstart` trains a real model offline while the official dev and test splits
stay honest held-out sets. Apache-2.0, attribution in NOTICE.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from gamjeong.labels import to_label_ids

SUBSET_RESOURCE = "resources/goemotions-korean-subset.csv.gz"
ORIGIN = "GoEmotions-Korean (monologg/GoEmotions-Korean, Apache-2.0), mapped to the seven emotions"


def goemotions_subset_path() -> Path:
    """Path of the gzip CSV (header `text,label`, Korean label names)."""
    return Path(str(resources.files("gamjeong").joinpath(SUBSET_RESOURCE)))


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    frame = pd.read_csv(goemotions_subset_path(), encoding="utf-8", dtype=str, keep_default_na=False)
    return pd.DataFrame({"text": frame["text"], "label": to_label_ids(frame["label"])})


def load_goemotions_subset() -> pd.DataFrame:
    """The subset as a DataFrame with columns `text` (str) and `label` (int class id)."""
    return _load().copy()
