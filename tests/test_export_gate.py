"""The export gate's decision on constructed probability arrays: near-ties may flip, quality and confident answers may not."""

from __future__ import annotations

import numpy as np
import pytest

from gamjeong.export.gate import GateRule, GateSettings, decide, parity_figures

INT8 = GateSettings()  # the int8 defaults: 1 point of quality, 99 % agreement where PyTorch's margin >= 0.2
FP32 = GateSettings(rule=GateRule.AGREEMENT, min_agreement=0.995)


def _probs(first: int, second: int, margin: float) -> list[float]:
    """Seven probabilities whose top class is `first`, `margin` above `second`; the rest share what is left."""
    row = np.full(7, 0.0)
    top = 0.5 + margin / 2
    row[first], row[second] = top, top - margin
    rest = [i for i in range(7) if i not in (first, second)]
    row[rest] = (1.0 - row.sum()) / len(rest)
    return row.tolist()


def _arrays(
    confident: int, ties: int, *, flip_ties: int = 0, flip_confident: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """PyTorch confident on `confident` texts (class 0, right) and nearly tied 1-vs-2 on `ties` texts (label 6,
    so both answers are wrong). The candidate flips `flip_ties` near-ties, half 1->2 and half 2->1, which changes
    no per-class count, and `flip_confident` confident answers."""
    reference, candidate, labels = [], [], []
    for i in range(confident):
        reference.append(_probs(0, 3, 0.5))
        candidate.append(_probs(3, 0, 0.05) if i < flip_confident else _probs(0, 3, 0.45))
        labels.append(0)
    for i in range(ties):
        first, second = (1, 2) if i % 2 == 0 else (2, 1)
        reference.append(_probs(first, second, 0.01))
        candidate.append(_probs(second, first, 0.01) if i < flip_ties else _probs(first, second, 0.02))
        labels.append(6)
    return np.array(reference), np.array(candidate), labels


def test_flips_between_near_ties_pass_although_raw_agreement_is_low() -> None:
    reference, candidate, labels = _arrays(50, 50, flip_ties=20)
    decision = decide(reference, candidate, labels, INT8)
    assert decision.passed, decision.reasons
    figures = decision.figures
    assert figures["argmax_agreement"] == pytest.approx(0.8)  # the old 98 % raw-agreement gate failed this
    assert figures["near_ties"] == 50 and figures["confident_texts"] == 50
    assert figures["confident_agreement"] == 1.0
    assert figures["quality_drop"] == {"accuracy": 0.0, "macro_f1": pytest.approx(0.0)}
    assert decision.shortfall == 0.0
    # the same arrays under the strict fp32/fp16 rule fail on raw agreement
    strict = decide(reference, candidate, labels, FP32)
    assert not strict.passed and "argmax agreement 80.00% is below 99.50%" in strict.reasons[0]


def test_a_real_quality_drop_fails_even_when_only_near_ties_flip() -> None:
    reference, candidate, _ = _arrays(50, 50, flip_ties=4)
    labels = [0] * 50 + [1 if i % 2 == 0 else 2 for i in range(50)]  # now PyTorch was right on its near-ties
    decision = decide(reference, candidate, labels, INT8)
    assert not decision.passed
    assert decision.figures["confident_agreement"] == 1.0  # only the quality rule catches it
    assert decision.figures["quality_drop"]["accuracy"] == pytest.approx(0.04)
    assert any(reason.startswith("accuracy drops 4.00 points") for reason in decision.reasons)
    assert decision.shortfall > 0
    # a looser tolerance lets the same export through
    assert decide(reference, candidate, labels, INT8.model_copy(update={"max_quality_drop": 0.05})).passed


def test_changed_confident_answers_fail_without_labels() -> None:
    reference, candidate, _ = _arrays(100, 50, flip_ties=50, flip_confident=1)
    assert decide(reference, candidate, None, INT8).passed  # 99/100 confident answers kept; every near-tie flipped
    reference, candidate, _ = _arrays(100, 0, flip_confident=2)
    decision = decide(reference, candidate, None, INT8)
    assert not decision.passed
    assert "quality_drop" not in decision.figures and "reference" not in decision.figures
    assert decision.figures["confident_agreement"] == pytest.approx(0.98)
    assert "confident texts" in decision.reasons[0]


def test_a_quality_drop_of_exactly_the_tolerance_passes() -> None:
    reference, candidate, _ = _arrays(100, 0, flip_confident=1)
    labels = [0] * 100
    settings = INT8.model_copy(update={"min_confident_agreement": 0.0})
    assert decide(reference, candidate, labels, settings).passed  # accuracy 1.00 -> 0.99: one point, allowed
    assert not decide(reference, candidate, labels, settings.model_copy(update={"max_quality_drop": 0.009})).passed


def test_figures_of_identical_arrays() -> None:
    reference, _, labels = _arrays(10, 10)
    figures = parity_figures(reference, reference.copy(), labels)
    assert figures["argmax_agreement"] == 1.0 and figures["disagreements"] == 0
    assert figures["max_abs_prob_diff"] == 0.0 and figures["max_reference_margin_of_disagreements"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        parity_figures(reference, reference[:5], None)
