"""KOTE comments mapped to the seven emotions, shipped with the package (resources/KOTE.md says how).

Native Korean online comments (searle-j/KOTE, MIT). Rows from KOTE's val.tsv may be trained on; rows from its test.tsv
are gamjeong's native yardstick and are never trained on. Built by gamjeong.training.kote; attribution in NOTICE.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import pandas as pd

from gamjeong.labels import to_label_ids

KOTE_RESOURCE = "resources/kote-7class.csv.gz"
ORIGIN = "KOTE (searle-j/KOTE, MIT): native Korean online comments, 44 emotions mapped to the seven"


def kote_path() -> Path:
    """Path of the gzip CSV (header `text,label,split,kote_id`, English label names)."""
    return Path(str(resources.files("gamjeong").joinpath(KOTE_RESOURCE)))


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    frame = pd.read_csv(kote_path(), encoding="utf-8", dtype=str, keep_default_na=False)
    return pd.DataFrame({"text": frame["text"], "label": to_label_ids(frame["label"]), "split": frame["split"]})


def load_kote(split: Literal["val", "test"]) -> pd.DataFrame:
    """The mapped comments of one KOTE file as `text` (str) and `label` (int class id); `test` is held out."""
    frame = _load()
    return frame.loc[frame["split"] == split, ["text", "label"]].reset_index(drop=True)
