"""One classification result, whatever produced it: the most likely emotion of a text and all seven probabilities.

`gamjeong classify` prints it for a local model (gamjeong.training.classify) and for a running server
(gamjeong.clients.cli); the server ranks the classes of its answers with the same `ranked_ids`, so a tie goes to the
same emotion everywhere (the lower class id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gamjeong.labels import EMOTIONS, LABEL_NAMES


def ranked_ids(probabilities: Sequence[float] | np.ndarray) -> list[int]:
    """Class ids from the most to the least likely; equal probabilities keep id order (as argmax does)."""
    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")]


@dataclass(frozen=True)
class Classification:
    text: str
    label: str  # English name
    label_ko: str
    label_id: int
    score: float  # probability of `label`
    probabilities: dict[str, float]  # every class by English name, in id order

    @classmethod
    def from_probabilities(cls, text: str, probs: Sequence[float]) -> Classification:
        probs = np.asarray(probs, dtype=np.float64)
        best = ranked_ids(probs)[0]
        return cls(
            text=text,
            label=EMOTIONS[best].name,
            label_ko=EMOTIONS[best].name_ko,
            label_id=best,
            score=float(probs[best]),
            probabilities={name: float(p) for name, p in zip(LABEL_NAMES, probs, strict=True)},
        )
