"""The export gate's decision on constructed probability arrays: near-ties may flip, quality and confident answers may not."""

from __future__ import annotations

import numpy as np
import pytest

from gamjeong.export.gate import GateRule, GateSettings, decide, paired_bootstrap, parity_figures, quality

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
    # the point estimate alone (drop_confidence 0): one changed answer of 100 is not evidence of anything
    settings = INT8.model_copy(update={"min_confident_agreement": 0.0, "drop_confidence": 0.0})
    assert decide(reference, candidate, labels, settings).passed  # accuracy 1.00 -> 0.99: one point, allowed
    assert not decide(reference, candidate, labels, settings.model_copy(update={"max_quality_drop": 0.009})).passed


def test_figures_of_identical_arrays() -> None:
    reference, _, labels = _arrays(10, 10)
    figures = parity_figures(reference, reference.copy(), labels)
    assert figures["argmax_agreement"] == 1.0 and figures["disagreements"] == 0
    assert figures["max_abs_prob_diff"] == 0.0 and figures["max_reference_margin_of_disagreements"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        parity_figures(reference, reference[:5], None)


def _labelled_flips(worse: int, better: int, texts: int = 400) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """PyTorch nearly tied 1-vs-2 on every text (so the confident-text rule is silent); the export flips `worse`
    texts PyTorch had right to a wrong answer and `better` texts PyTorch had wrong to the right one."""
    reference = np.array([_probs(1, 2, 0.01)] * texts)
    candidate = reference.copy()
    labels = [1] * (texts // 2) + [2] * (texts - texts // 2)
    flipped = list(range(worse)) + list(range(texts - better, texts))  # class-1 texts made wrong, class-2 made right
    candidate[flipped] = _probs(2, 1, 0.01)
    return reference, candidate, labels


def test_a_drop_within_sampling_noise_passes_and_says_so() -> None:
    # 12 answers made worse and 6 made better of 400: accuracy -1.5 points, but the changed texts are few and mixed
    reference, candidate, labels = _labelled_flips(worse=12, better=6)
    decision = decide(reference, candidate, labels, INT8)
    assert decision.figures["quality_drop"]["accuracy"] == pytest.approx(0.015)
    assert decision.passed, decision.reasons
    share = decision.figures["quality_drop_worse_share"]["accuracy"]
    assert 0.5 < share < 0.95
    assert any("accuracy drops 1.50 points, within noise" in note for note in decision.figures["notes"])
    low, high = decision.figures["quality_drop_interval"]["accuracy"]
    assert low < 0 < 0.015 < high
    # the point-estimate rule fails the same export
    point = decide(reference, candidate, labels, INT8.model_copy(update={"drop_confidence": 0.0}))
    assert not point.passed and "quality_drop_worse_share" not in point.figures


def test_a_systematic_drop_fails_despite_the_bootstrap() -> None:
    reference, candidate, labels = _labelled_flips(worse=12, better=0)  # every change is for the worse
    decision = decide(reference, candidate, labels, INT8)
    assert not decision.passed
    assert decision.figures["quality_drop_worse_share"]["accuracy"] > 0.99
    assert any(reason.startswith("accuracy drops 3.00 points") and "bootstrap" in reason for reason in decision.reasons)


def test_the_bootstrap_scores_like_sklearn_and_is_paired() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 300)
    reference_pred = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 7, 300))
    candidate_pred = np.where(rng.random(300) < 0.05, rng.integers(0, 7, 300), reference_pred)
    drops = paired_bootstrap(labels, reference_pred, candidate_pred, resamples=400, seed=0)
    assert drops["macro_f1"].shape == (400,)
    # one resample with every text once is the plain score: check the weighted metric against sklearn
    from gamjeong.export.gate import _weighted_quality

    ones = np.ones((1, 300))
    for pred in (reference_pred, candidate_pred):
        expected = quality(labels.tolist(), pred)
        scored = _weighted_quality(ones, labels, pred)
        assert scored["accuracy"][0] == pytest.approx(expected["accuracy"])
        assert scored["macro_f1"][0] == pytest.approx(expected["macro_f1"])
    # paired: identical predictions give a drop of exactly zero in every resample
    same = paired_bootstrap(labels, reference_pred, reference_pred.copy(), resamples=50, seed=0)
    assert not same["accuracy"].any() and not same["macro_f1"].any()
