"""The parity gate's decision: a pure function of PyTorch's and the export's probabilities (and labels, if any).

Two rules, chosen by precision:

- `agreement` (fp32, fp16): the export must pick PyTorch's class on at least `min_agreement` of the texts (99.5 %).
  These exports compute the same maths, so anything short of near-total agreement is a bug.
- `quality` (int8): rounding weights to 8 bits moves every probability a little, so raw argmax agreement punishes
  flips between classes PyTorch itself could barely tell apart (a 7-class model has many near-ties) while no metric a
  user cares about moves. The int8 export instead fails when
  * with labels: its accuracy or macro-F1 is more than `max_quality_drop` (1.0 point) below PyTorch's, or
  * its agreement on *confident* texts (PyTorch's top-two margin >= `confident_margin`, 0.2) is below
    `min_confident_agreement` (99 %): a confident answer that changes is damage, whatever the labels say.
  Without labels only the confident-text agreement applies. An optional `min_agreement` floor can be added.
Raw agreement, max/mean |Δp| and the number of near-ties are always reported, whatever the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class GateRule(str, Enum):
    AGREEMENT = "agreement"
    QUALITY = "quality"


class GateSettings(BaseModel):
    """What the gate requires; fractions, not points (max_quality_drop=0.01 is one point)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: GateRule = GateRule.QUALITY
    min_agreement: float | None = Field(None, ge=0.0, le=1.0, description="Raw argmax agreement floor (None: none).")
    max_quality_drop: float = Field(0.01, ge=0.0, le=1.0, description="Largest accuracy/macro-F1 drop allowed.")
    confident_margin: float = Field(0.2, ge=0.0, le=1.0, description="PyTorch top-two margin of a confident text.")
    min_confident_agreement: float = Field(0.99, ge=0.0, le=1.0, description="Agreement required on those texts.")

    def threshold(self) -> float:
        """The one number older readers of parity.json show as the gate's threshold."""
        if self.rule is GateRule.AGREEMENT:
            return float(self.min_agreement if self.min_agreement is not None else 0.0)
        return self.min_confident_agreement


class GateDecision(BaseModel):
    """The verdict, why, and every figure it was based on (what parity.json records)."""

    passed: bool
    reasons: list[str]
    shortfall: float  # how far from passing (0 when passed): lets a search name its best failing candidate
    figures: dict[str, object]


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """Gap between the two largest probabilities of each row."""
    if len(probs) == 0:
        return np.zeros(0, dtype=np.float32)
    top_two = np.sort(probs, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def quality(labels: Sequence[int], predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", labels=list(range(7)), zero_division=0)),
    }


def parity_figures(
    reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int] | None, *, confident_margin: float = 0.2
) -> dict[str, object]:
    """Differences, agreements and (with labels) quality of both, for probability arrays of the same texts."""
    if reference.shape != candidate.shape:
        raise ValueError(f"probability arrays differ in shape: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference - candidate)
    reference_pred, candidate_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    agree = reference_pred == candidate_pred
    margin = top_two_margin(reference)
    confident = margin >= confident_margin
    figures: dict[str, object] = {
        "texts": len(reference),
        "max_abs_prob_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else 0.0,
        "argmax_agreement": float(agree.mean()) if len(agree) else 1.0,
        "disagreements": int((~agree).sum()),
        # how close to a tie PyTorch was where the two disagree: flips of near-ties are rounding, not damage
        "max_reference_margin_of_disagreements": float(margin[~agree].max()) if (~agree).any() else 0.0,
        "confident_margin": confident_margin,
        "near_ties": int((~confident).sum()),
        "confident_texts": int(confident.sum()),
        "confident_agreement": float(agree[confident].mean()) if confident.any() else 1.0,
        "confident_disagreements": int((~agree & confident).sum()),
    }
    if labels is not None:
        reference_quality, candidate_quality = quality(labels, reference_pred), quality(labels, candidate_pred)
        figures["reference"] = reference_quality
        figures["candidate"] = candidate_quality
        figures["quality_drop"] = {k: reference_quality[k] - candidate_quality[k] for k in reference_quality}
    return figures


def decide(
    reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int] | None, settings: GateSettings
) -> GateDecision:
    """Pass or fail an export from its probabilities and PyTorch's on the same texts (labels optional)."""
    figures = parity_figures(reference, candidate, labels, confident_margin=settings.confident_margin)
    reasons: list[str] = []
    shortfall = 0.0
    agreement = float(figures["argmax_agreement"])  # type: ignore[arg-type]
    min_agreement = settings.min_agreement
    if settings.rule is GateRule.AGREEMENT and min_agreement is None:
        min_agreement = 0.995
    if min_agreement is not None and agreement < min_agreement:
        reasons.append(f"argmax agreement {agreement:.2%} is below {min_agreement:.2%}")
        shortfall += min_agreement - agreement
    if settings.rule is GateRule.QUALITY:
        confident = float(figures["confident_agreement"])  # type: ignore[arg-type]
        if confident < settings.min_confident_agreement:
            reasons.append(
                f"agreement on the {figures['confident_texts']} confident texts (PyTorch margin >= "
                f"{settings.confident_margin:g}) is {confident:.2%}, below {settings.min_confident_agreement:.2%}"
            )
            shortfall += settings.min_confident_agreement - confident
        drops: dict[str, float] = figures.get("quality_drop", {})  # type: ignore[assignment]
        for metric, drop in drops.items():
            # a tiny epsilon: a drop of exactly the tolerance passes despite float rounding
            if drop > settings.max_quality_drop + 1e-9:
                reasons.append(
                    f"{metric.replace('_', '-')} drops {drop * 100:.2f} points below PyTorch's "
                    f"(more than {settings.max_quality_drop * 100:g})"
                )
                shortfall += drop - settings.max_quality_drop
    figures.update(
        {
            "rule": settings.rule.value,
            "min_agreement": min_agreement,
            "max_quality_drop": settings.max_quality_drop,
            "min_confident_agreement": settings.min_confident_agreement,
        }
    )
    return GateDecision(passed=not reasons, reasons=reasons, shortfall=round(shortfall, 6), figures=figures)
