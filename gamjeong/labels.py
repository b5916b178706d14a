"""The seven emotion classes. This module is the only place that spells them out.

Ids are part of the API (proto, config.json, metrics) and never change order:
0 joy 기쁨, 1 sadness 슬픔, 2 anger 분노, 3 fear 공포, 4 surprise 놀람, 5 disgust 혐오, 6 neutral 중립.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gamjeong.errors import GamjeongError


@dataclass(frozen=True)
class Emotion:
    id: int
    name: str  # English name: the canonical label used in config.json, metrics and the API
    name_ko: str


EMOTIONS: tuple[Emotion, ...] = (
    Emotion(0, "joy", "기쁨"),
    Emotion(1, "sadness", "슬픔"),
    Emotion(2, "anger", "분노"),
    Emotion(3, "fear", "공포"),
    Emotion(4, "surprise", "놀람"),
    Emotion(5, "disgust", "혐오"),
    Emotion(6, "neutral", "중립"),
)
NUM_LABELS = len(EMOTIONS)
LABEL_NAMES: tuple[str, ...] = tuple(e.name for e in EMOTIONS)
LABEL_NAMES_KO: tuple[str, ...] = tuple(e.name_ko for e in EMOTIONS)
ID2LABEL: dict[int, str] = {e.id: e.name for e in EMOTIONS}
LABEL2ID: dict[str, int] = {e.name: e.id for e in EMOTIONS}

# Names used by real data sources, mapped onto our classes. Keys are compared case-insensitively.
_EXTRA_ALIASES: dict[str, int] = {
    "행복": 0,  # AI Hub 단발성 대화 데이터셋 calls joy 행복
    "happiness": 0,
    "happy": 0,
    "sad": 1,
    "angry": 2,
    "분노감": 2,
    "scared": 3,
    "afraid": 3,
    "놀라움": 4,
    "surprised": 4,
    "disgusted": 5,
    "none": 6,
    "neutrality": 6,
}
ALIASES: dict[str, int] = {
    **{e.name: e.id for e in EMOTIONS},
    **{e.name_ko: e.id for e in EMOTIONS},
    **{str(e.id): e.id for e in EMOTIONS},
    **_EXTRA_ALIASES,
}


def accepted_label_names() -> list[str]:
    """Every name `to_label_id` accepts, for error messages."""
    return sorted(ALIASES, key=lambda name: (ALIASES[name], name))


def to_label_id(raw: object) -> int | None:
    """Map a raw label from a data file (English, Korean, alias or id) to its class id, or None if unknown."""
    if raw is None:
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return ALIASES.get(str(raw).strip().lower())


def to_label_ids(values: Iterable[object]) -> list[int]:
    """Map a whole label column; unknown labels raise one error that lists them all and the accepted names."""
    values = list(values)
    ids = [to_label_id(v) for v in values]
    unknown = sorted({str(v) for v, i in zip(values, ids, strict=True) if i is None})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise GamjeongError(f"Unknown label(s) {shown}; accepted names are {', '.join(accepted_label_names())}.")
    return [i for i in ids if i is not None]


def is_gamjeong_label_map(id2label: dict) -> bool:
    """True when a model config's id2label is exactly our seven classes in our order."""
    try:
        return {int(k): str(v) for k, v in id2label.items()} == ID2LABEL
    except (TypeError, ValueError):
        return False
