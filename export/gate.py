"""The parity gate's decision: a pure function of PyTorch's and the export's probabilities (and labels, if any).

Two rules, chosen by precision:

- `agreement` (fp32, fp16): the export must pick PyTorch's class on at least `min_agreement` of the texts (99.5 %).
  These exports compute the same maths, so anything short of near-total agreement is a bug.
- `quality` (int8): rounding weights to 8 bits moves every probability a little, so raw argmax agreement punishes
  flips between classes PyTorch itself could barely tell apart (a 7-class model has many near-ties) while no metric a
  user cares about moves. The int8 export instead fails when
  * with labels: its accuracy or macro-F1 is more than `max_quality_drop` (1.0 point) below PyTorch's *and* the drop
    is more than noise: in a paired bootstrap of the texts (`bootstrap_resamples` resamples, both models scored on
    the same resample) the export scores below PyTorch in at least `drop_confidence` (95 %) of them. On a few hundred
    texts with a dozen examples of a rare class, one changed answer moves macro-F1 by about a point, so the point
    estimate alone fails real exports on sampling noise; a systematic drop is below zero in nearly every resample.
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

from gamjeong.labels import NUM_LABELS


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
    drop_confidence: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="A drop beyond the tolerance fails only if the export scores below PyTorch in at least this "
        "share of paired bootstrap resamples (0: the point estimate alone decides).",
    )
    bootstrap_resamples: int = Field(1000, ge=1, description="Resamples of the paired bootstrap.")
    seed: int = 0

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
        "macro_f1": float(
            f1_score(labels, predicted, average="macro", labels=list(range(NUM_LABELS)), zero_division=0)
        ),
    }


def paired_bootstrap(
    labels: Sequence[int], reference_pred: np.ndarray, candidate_pred: np.ndarray, *, resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 drops (PyTorch minus export) on `resamples` resamples of the texts, paired: both
    models are scored on the same resampled texts, so only the texts where they differ move the drop."""
    y = np.asarray(labels)
    n = len(y)
    rng = np.random.default_rng(seed)
    drops: dict[str, list[np.ndarray]] = {"accuracy": [], "macro_f1": []}
    chunk = max(1, 2_000_000 // max(n, 1))  # resample weights in chunks: a few MB whatever the number of texts
    for start in range(0, resamples, chunk):
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start)).astype(np.float64)
        scored = [_weighted_quality(weights, y, pred) for pred in (reference_pred, candidate_pred)]
        for metric in drops:
            drops[metric].append(scored[0][metric] - scored[1][metric])
    return {metric: np.concatenate(parts) for metric, parts in drops.items()}


def _weighted_quality(weights: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 (seven classes, F1 0 for a class with no support and no prediction, as sklearn's
    zero_division=0) of one prediction vector under each row of resample weights."""
    correct = pred == y
    f1 = []
    for label in range(NUM_LABELS):
        true_positives = weights @ (correct & (y == label))
        denominator = weights @ (pred == label) + weights @ (y == label)
        f1.append(np.divide(2 * true_positives, denominator, out=np.zeros_like(denominator), where=denominator > 0))
    return {"accuracy": weights @ correct / len(y), "macro_f1": np.mean(f1, axis=0)}


def parity_figures(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: Sequence[int] | None,
    *,
    confident_margin: float = 0.2,
    bootstrap: tuple[int, int] | None = None,
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
        if bootstrap is not None:
            resamples, seed = bootstrap
            drops = paired_bootstrap(labels, reference_pred, candidate_pred, resamples=resamples, seed=seed)
            # share of resamples where the export scores below PyTorch, and the 90 % interval of the drop
            figures["quality_drop_worse_share"] = {k: float((v > 0).mean()) for k, v in drops.items()}
            figures["quality_drop_interval"] = {
                k: [float(np.percentile(v, 5)), float(np.percentile(v, 95))] for k, v in drops.items()
            }
    return figures


def decide(
    reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int] | None, settings: GateSettings
) -> GateDecision:
    """Pass or fail an export from its probabilities and PyTorch's on the same texts (labels optional)."""
    noise_aware = settings.rule is GateRule.QUALITY and settings.drop_confidence > 0
    figures = parity_figures(
        reference,
        candidate,
        labels,
        confident_margin=settings.confident_margin,
        bootstrap=(settings.bootstrap_resamples, settings.seed) if noise_aware else None,
    )
    reasons: list[str] = []
    notes: list[str] = []  # what was looked at and forgiven, for the printout
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
        worse: dict[str, float] = figures.get("quality_drop_worse_share", {})  # type: ignore[assignment]
        for metric, drop in drops.items():
            # a tiny epsilon: a drop of exactly the tolerance passes despite float rounding
            if drop <= settings.max_quality_drop + 1e-9:
                continue
            name = metric.replace("_", "-")
            if metric in worse and worse[metric] < settings.drop_confidence:
                notes.append(
                    f"{name} drops {drop * 100:.2f} points, within noise: the export scores below PyTorch in "
                    f"{worse[metric]:.0%} of bootstrap resamples (fails from {settings.drop_confidence:.0%})"
                )
                continue
            beyond = f", below PyTorch in {worse[metric]:.0%} of bootstrap resamples" if metric in worse else ""
            reasons.append(
                f"{name} drops {drop * 100:.2f} points below PyTorch's (more than "
                f"{settings.max_quality_drop * 100:g}{beyond})"
            )
            shortfall += drop - settings.max_quality_drop
    figures.update(
        {
            "rule": settings.rule.value,
            "min_agreement": min_agreement,
            "max_quality_drop": settings.max_quality_drop,
            "min_confident_agreement": settings.min_confident_agreement,
            "drop_confidence": settings.drop_confidence if noise_aware else None,
            "notes": notes,
        }
    )
    return GateDecision(passed=not reasons, reasons=reasons, shortfall=round(shortfall, 6), figures=figures)
