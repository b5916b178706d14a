"""Accuracy-aware int8: try configurations in order of expected speed until one passes the gate.

Like Intel Neural Compressor's accuracy-driven tuning, but built on Optimum/ONNX Runtime's own options:

1. the preset asked for: static int8 first when calibration texts are given (no run-time activation quantisation,
   so the fastest), then dynamic int8 per-channel (the default; as fast as per-tensor and far closer to fp32);
2. if none passes, a sensitivity pass: per-channel int8 with one node group (the embeddings, one encoder layer, ...)
   left in fp32 at a time, on at most `sensitivity_texts` texts, ranked by the damage that remains (the summed
   PyTorch margin of the answers that still change); those graphs are made by putting the group's fp32 nodes back
   into the per-channel graph (export/surgery.py: Optimum's graph with the group excluded, in ~1 s instead of ~13 s);
3. fallbacks: per-channel int8 with the 1, 2, 3, ... most sensitive groups kept in fp32 (`nodes_to_exclude`), until
   one passes or `max_candidates` candidates have been judged.
The first passing candidate is the fastest expected one and is kept. Its latency at 1x32 (and the fp32 graph's) is
measured here so the manifest shows what the accuracy cost in speed. PyTorch runs once; every candidate is judged
against the same reference probabilities.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gamjeong.export.gate import GateDecision, GateSettings, decide, parity_figures, top_two_margin
from gamjeong.export.parity import ParityTexts
from gamjeong.export.quantize import (
    Approach,
    Calibration,
    CandidateSpec,
    activation_matmuls,
    quantize_candidate,
    weight_groups,
)
from gamjeong.export.targets import ResolvedTarget

Report = Callable[[str], None]
LATENCY_TEXT = "오늘 정말 행복해요 그런데 조금 피곤하기도 하고 내일 회의가 걱정돼요 " * 4


class SearchSettings(BaseModel):
    """How far the search may go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="False: judge exactly the preset asked for, nothing else.")
    fallbacks: bool = Field(
        True, description="False: presets only, no sensitivity pass (--force publishes whatever the gate says)."
    )
    max_candidates: int = Field(5, ge=1, description="Candidates judged by the gate on all parity texts.")
    sensitivity_texts: int = Field(500, ge=1, description="Texts each sensitivity run is measured on.")
    latency_runs: int = Field(20, ge=1, description="Timed runs of the 1x32 latency measurement.")
    seed: int = 0


@dataclass
class Evaluated:
    """A candidate that was quantised and judged."""

    spec: CandidateSpec
    path: Path
    info: dict[str, object]
    decision: GateDecision
    quantize_s: float
    evaluate_s: float
    latency_ms: float | None = None

    def row(self) -> dict[str, object]:
        figures = self.decision.figures
        return {
            "candidate": self.spec.name,
            "approach": self.spec.approach.value,
            "per_channel": self.spec.per_channel,
            "fp32_groups": list(self.spec.fp32_groups),
            "fp32_nodes": len(self.spec.nodes_to_exclude),
            "passed": self.decision.passed,
            "reasons": self.decision.reasons,
            **{
                k: figures.get(k)
                for k in (
                    "argmax_agreement",
                    "confident_agreement",
                    "confident_texts",
                    "mean_abs_prob_diff",
                    "max_abs_prob_diff",
                    "quality_drop",
                )
                if k in figures
            },
            "quality": figures.get("candidate"),  # accuracy and macro-F1 of this candidate (with labels)
            "latency_ms_1x32": self.latency_ms,
            "quantize_s": round(self.quantize_s, 2),
            "evaluate_s": round(self.evaluate_s, 2),
        }


@dataclass
class SearchOutcome:
    chosen: Evaluated
    candidates: list[Evaluated]
    sensitivity: list[dict[str, object]] | None
    fp32_latency_ms: float | None
    wall_s: float
    settings: SearchSettings
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """What parity.json and the manifest record about the search."""
        speedup = (
            round(self.fp32_latency_ms / self.chosen.latency_ms, 2)
            if self.fp32_latency_ms and self.chosen.latency_ms
            else None
        )
        return {
            "enabled": self.settings.enabled,
            "chosen": self.chosen.spec.name,
            "fp32_groups": list(self.chosen.spec.fp32_groups),
            "candidates": [c.row() for c in self.candidates],
            "sensitivity": self.sensitivity,
            "latency_ms_1x32": {"int8": self.chosen.latency_ms, "onnx_fp32": self.fp32_latency_ms},
            "speedup_vs_onnx_fp32_1x32": speedup,
            "max_candidates": self.settings.max_candidates,
            "sensitivity_texts": self.settings.sensitivity_texts,
            "wall_s": round(self.wall_s, 1),
            "notes": self.notes,
        }


class CandidateRunner:
    """Quantises candidates of one fp32 graph and runs them on the parity texts through OnnxPredictor."""

    def __init__(
        self,
        onnx_path: Path,
        work: Path,
        target: ResolvedTarget,
        tokenizer,
        texts: ParityTexts,
        reference_probs: np.ndarray,
        gate: GateSettings,
        *,
        max_length: int,
        calibration: Calibration | None = None,
    ) -> None:
        self.onnx_path, self.work, self.target, self.tokenizer = onnx_path, work, target, tokenizer
        self.texts, self.reference, self.gate = texts, reference_probs, gate
        self.max_length, self.calibration = max_length, calibration
        self._count = 0
        self._activation_products: list[str] | None = None  # the same for every candidate: found once

    def predictor(self, path: Path):
        from gamjeong.onnx_runtime import create_session
        from gamjeong.predictor import OnnxPredictor

        # judged where it will run: int8 is for CPUs, even when a GPU is present
        session = create_session(path, provider="cpu")
        return OnnxPredictor(session, self.tokenizer, precision="int8", max_length=self.max_length)

    def quantize(self, spec: CandidateSpec) -> tuple[Path, dict[str, object], float]:
        self._count += 1
        start = time.perf_counter()
        out = self.work / f"candidate-{self._count:02d}"
        if self._activation_products is None:
            self._activation_products = activation_matmuls(self.onnx_path)
        path, info = quantize_candidate(
            self.onnx_path, out, spec, self.target, self.calibration, self._activation_products
        )
        return path, info, time.perf_counter() - start

    def evaluate(self, spec: CandidateSpec) -> Evaluated:
        path, info, quantize_s = self.quantize(spec)
        start = time.perf_counter()
        probs = self.predictor(path).predict_proba(self.texts.texts)
        decision = decide(self.reference, probs, self.texts.labels, self.gate)
        return Evaluated(spec, path, info, decision, quantize_s, time.perf_counter() - start)

    def latency_ms(self, path: Path, runs: int) -> float:
        """Median latency of one text of 32 tokens (a few warm-up runs first)."""
        predictor = self.predictor(path) if path != self.onnx_path else self._fp32_predictor()
        ids = predictor.encode([LATENCY_TEXT])[0].input_ids[:32]
        input_ids = np.array([ids], dtype=np.int64)
        mask = np.ones_like(input_ids)
        for _ in range(3):
            predictor.logits(input_ids, mask)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            predictor.logits(input_ids, mask)
            times.append((time.perf_counter() - start) * 1000)
        return round(statistics.median(times), 3)

    def _fp32_predictor(self):
        from gamjeong.onnx_runtime import create_session
        from gamjeong.predictor import OnnxPredictor

        session = create_session(self.onnx_path, provider="cpu")
        return OnnxPredictor(session, self.tokenizer, precision="fp32", max_length=self.max_length)


def initial_specs(*, per_channel: bool, static: bool, search: bool) -> list[CandidateSpec]:
    """The presets, fastest expected first; without search only the one asked for."""
    granularity = "per-channel" if per_channel else "per-tensor"
    specs = []
    if static:
        specs.append(CandidateSpec(name=f"static {granularity}", approach=Approach.STATIC, per_channel=per_channel))
    if not search:
        return specs or [CandidateSpec(name=f"dynamic {granularity}", per_channel=per_channel)]
    specs.append(CandidateSpec(name=f"dynamic {granularity}", per_channel=per_channel))
    if not per_channel:
        specs.append(CandidateSpec(name="dynamic per-channel", per_channel=True))
    return specs


def _sensitivity(
    runner: CandidateRunner, base: Evaluated, settings: SearchSettings, say: Report
) -> tuple[list[dict[str, object]], dict[str, list[str]]]:
    """Leave one group out of per-channel int8 at a time; rank the groups by the damage that remains. Each graph is
    the per-channel candidate with the group's fp32 nodes put back (export/surgery.py: the same graph Optimum makes
    with those nodes excluded, in a second instead of ~13 s)."""
    import onnx

    from gamjeong.export.surgery import keep_in_fp32

    operators = [str(op) for op in base.info["operators"]]  # type: ignore[union-attr]
    groups = weight_groups(runner.onnx_path, operators)
    count = len(runner.texts.texts)
    if count > settings.sensitivity_texts:
        rng = np.random.default_rng(settings.seed)
        subset = np.sort(rng.choice(count, settings.sensitivity_texts, replace=False))
    else:
        subset = np.arange(count)
    texts = [runner.texts.texts[i] for i in subset]
    reference = runner.reference[subset]
    say(f"sensitivity pass: {len(groups)} groups, each kept in fp32 in turn, on {len(texts)} texts")
    fp32_graph, int8_graph = onnx.load(str(runner.onnx_path)), onnx.load(str(base.path))
    rows: list[dict[str, object]] = []
    for name, nodes in groups.items():
        start = time.perf_counter()
        path = runner.work / f"sensitivity-{name}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(keep_in_fp32(int8_graph, fp32_graph, nodes), str(path))
        probs = runner.predictor(path).predict_proba(texts)
        shutil.rmtree(path.parent, ignore_errors=True)
        figures = parity_figures(reference, probs, None, confident_margin=runner.gate.confident_margin)
        flipped = reference.argmax(axis=1) != probs.argmax(axis=1)
        rows.append(
            {
                "group": name,
                "nodes": len(nodes),
                "argmax_agreement": figures["argmax_agreement"],
                "disagreements": figures["disagreements"],
                "confident_agreement": figures["confident_agreement"],
                "mean_abs_prob_diff": figures["mean_abs_prob_diff"],
                "flip_damage": round(float(top_two_margin(reference)[flipped].sum()), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        say(
            f"  {name:>12} in fp32: agreement {figures['argmax_agreement']:.2%}, flip damage {rows[-1]['flip_damage']:.3f}, "
            f"mean |Δp| {figures['mean_abs_prob_diff']:.4f}"
        )
    # the least damage left when the group is in fp32 = the group whose rounding did the most damage. Damage is the
    # summed PyTorch margin of the answers that changed: a flipped near-tie costs ~0 (it is rounding noise and the
    # gate ignores it), a flipped confident answer costs a lot; mean |Δp| breaks ties.
    rows.sort(key=lambda r: (r["flip_damage"], r["disagreements"], r["mean_abs_prob_diff"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows, groups


def search(
    runner: CandidateRunner, settings: SearchSettings, *, per_channel: bool, static: bool, say: Report
) -> SearchOutcome:
    """Judge candidates in order of expected speed; keep the first that passes (else the best, for --force)."""
    start = time.perf_counter()
    evaluated: list[Evaluated] = []
    notes: list[str] = []
    if static:
        notes.append(
            "static int8 uses Optimum's min-max calibration; SmoothQuant is not offered because ORTQuantizer does "
            "not expose it (ONNX Runtime's needs neural-compressor)"
        )
    for spec in initial_specs(per_channel=per_channel, static=static, search=settings.enabled):
        if len(evaluated) >= settings.max_candidates:
            break
        evaluated.append(_judged(runner, spec, say))
        if evaluated[-1].decision.passed:
            break
    sensitivity = None
    passed = [c for c in evaluated if c.decision.passed]
    base = next((c for c in evaluated if c.spec.approach is Approach.DYNAMIC and c.spec.per_channel), None)
    if settings.enabled and not passed and not settings.fallbacks:
        notes.append("no fp32 fallbacks tried: --force publishes the best preset whatever the gate says")
    elif settings.enabled and not passed and base is not None and len(evaluated) < settings.max_candidates:
        sensitivity, groups = _sensitivity(runner, base, settings, say)
        ranked = [str(row["group"]) for row in sensitivity]
        for k in range(1, len(ranked) + 1):
            if len(evaluated) >= settings.max_candidates:
                break
            kept = tuple(ranked[:k])
            spec = CandidateSpec(
                name=f"dynamic per-channel, fp32 {', '.join(kept)}",
                fp32_groups=kept,
                nodes_to_exclude=tuple(node for group in kept for node in groups[group]),
            )
            # quantised by Optimum like every candidate that may be published
            evaluated.append(_judged(runner, spec, say))
            if evaluated[-1].decision.passed:
                break
        passed = [c for c in evaluated if c.decision.passed]
    chosen = passed[0] if passed else min(evaluated, key=lambda c: c.decision.shortfall)
    chosen.latency_ms = runner.latency_ms(chosen.path, settings.latency_runs)
    fp32_latency = runner.latency_ms(runner.onnx_path, settings.latency_runs)
    outcome = SearchOutcome(chosen, evaluated, sensitivity, fp32_latency, time.perf_counter() - start, settings, notes)
    for line in table(outcome):
        say(line)
    return outcome


def _judged(runner: CandidateRunner, spec: CandidateSpec, say: Report) -> Evaluated:
    result = runner.evaluate(spec)
    verdict = "passes" if result.decision.passed else "fails: " + "; ".join(result.decision.reasons)
    notes: list[str] = result.decision.figures.get("notes", [])  # type: ignore[assignment]
    if notes:
        verdict += f" ({'; '.join(notes)})"
    say(f"candidate '{spec.name}' {verdict}")
    return result


def table(outcome: SearchOutcome) -> list[str]:
    """A short printout: one line per candidate, the chosen one marked."""
    lines = [f"{'':2}{'candidate':<44} {'agree':>7} {'confident':>9} {'Δacc':>6} {'ΔF1':>6} {'ms 1x32':>8}  gate"]
    for c in outcome.candidates:
        figures = c.decision.figures
        drop: dict[str, float] = figures.get("quality_drop", {})  # type: ignore[assignment]
        acc = f"{-drop['accuracy'] * 100:+.2f}" if drop else "-"
        f1 = f"{-drop['macro_f1'] * 100:+.2f}" if drop else "-"
        ms = f"{c.latency_ms:.2f}" if c.latency_ms is not None else "-"
        lines.append(
            f"{'*' if c is outcome.chosen else ' ':2}{c.spec.name[:44]:<44} {figures['argmax_agreement']:>7.2%} "
            f"{figures['confident_agreement']:>9.2%} {acc:>6} {f1:>6} {ms:>8}  {'pass' if c.decision.passed else 'FAIL'}"
        )
    if outcome.fp32_latency_ms is not None:
        lines.append(f"  fp32 ONNX at 1x32: {outcome.fp32_latency_ms:.2f} ms; search took {outcome.wall_s:.1f} s")
    return lines
