"""The int8 accuracy search on a tiny model: it stops at per-channel when that passes, finds a layer made sensitive
and keeps it in fp32, obeys --no-search and its budget, and records everything in manifest.json and parity.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import korean_rows
from typer.testing import CliRunner

from gamjeong.artifacts import MANIFEST_FILE, PARITY_FILE

SENSITIVE_NODE = "/distilbert/transformer/layer.1/ffn/lin1/MatMul"
# Every text counts as confident: a random model's probabilities are near-uniform, so with the default 0.2 margin
# none would be, and the gate would judge nothing but quality (which shifted answers of a random model keep).
STRICT = ["--confident-margin", "0", "--min-confident-agreement", "0.95"]


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))


def _cli(*args: str):
    from gamjeong.cli import app

    return CliRunner().invoke(app, ["export", *args])


def _with_validation_split(path: Path) -> Path:
    import pandas as pd

    (path / "splits").mkdir()
    pd.DataFrame(korean_rows(), columns=["text", "label"]).to_csv(path / "splits" / "validation.csv", index=False)
    return path


@pytest.fixture(scope="module")
def plain_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    return _with_validation_split(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("plain") / "model"))


def _quantizes(onnx_path: Path, node_name: str) -> bool:
    """True when the quantised graph no longer holds `node_name` as an fp32 MatMul."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return not any(node.name == node_name and node.op_type == "MatMul" for node in graph.node)


@pytest.fixture
def layer1_sensitive(monkeypatch) -> None:
    """Make one node of the tiny model int8-sensitive: every candidate graph in which Optimum really quantised it
    answers with every class shifted by one (all answers change); the others answer as they compute.

    (A random tiny model's probabilities are nearly uniform and text-independent, so no weight edit makes int8
    rounding of one layer change its answers reliably; the candidate graphs, their quantisation and the search
    around them are all real.)"""
    from gamjeong.export import search

    real = search.CandidateRunner.predictor

    def predictor(self, path: Path):
        wrapped = real(self, path)
        if path != self.onnx_path and _quantizes(path, SENSITIVE_NODE):
            original = wrapped.predict_proba
            wrapped.predict_proba = lambda texts, batch_size=32: np.roll(original(texts, batch_size), 1, axis=1)
        return wrapped

    monkeypatch.setattr(search.CandidateRunner, "predictor", predictor)


def test_per_channel_that_passes_is_the_only_candidate(plain_dir: Path, tmp_path: Path) -> None:
    result = _cli("--model", str(plain_dir), "--output", str(tmp_path / "out"), *STRICT)
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path / "out")
    quantization, search = manifest["quantization"], manifest["parity"]["search"]
    assert quantization["candidate"] == "dynamic per-channel" and quantization["per_channel"] is True
    assert quantization["fp32_groups"] == [] and quantization["nodes_to_exclude"] == []
    assert [c["candidate"] for c in search["candidates"]] == ["dynamic per-channel"]
    assert search["sensitivity"] is None  # stopped at the first passing candidate
    assert search["candidates"][0]["passed"] is True
    assert quantization["latency_ms_1x32"] > 0 and search["latency_ms_1x32"]["onnx_fp32"] > 0
    assert manifest["parity"]["rule"] == "quality" and manifest["parity"]["passed"] is True
    assert "dynamic per-channel" in result.output  # the printed table
    # weights-only int8: the products of two activations (attention scores, softmax x values) stay fp32 MatMuls
    import onnx

    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    weights = {init.name for init in graph.initializer}
    activation_products = [
        n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)
    ]
    assert len(activation_products) == quantization["fp32_activation_matmuls"] == 4  # 2 layers x 2
    assert not any(n.op_type == "MatMul" and any(i in weights for i in n.input) for n in graph.node)


def test_search_keeps_the_sensitive_layer_in_fp32(plain_dir: Path, tmp_path: Path, layer1_sensitive) -> None:
    output = tmp_path / "out"
    result = _cli("--model", str(plain_dir), "--output", str(output), *STRICT)
    assert result.exit_code == 0, result.output
    manifest = _manifest(output)
    parity = json.loads((output / PARITY_FILE).read_text(encoding="utf-8"))
    search = parity["search"]
    first, chosen = search["candidates"]
    assert first["candidate"] == "dynamic per-channel" and first["passed"] is False
    assert first["argmax_agreement"] == 0.0
    assert chosen["passed"] is True and chosen["fp32_groups"] == ["layer.1"]
    # the sensitivity pass tried every group and ranked the damaged layer first
    ranked = [row["group"] for row in search["sensitivity"]]
    assert ranked[0] == "layer.1" and {"layer.0", "layer.1"} <= set(ranked)
    assert search["sensitivity"][0]["argmax_agreement"] == 1.0 and search["sensitivity"][-1]["argmax_agreement"] == 0.0
    quantization = manifest["quantization"]
    assert quantization["candidate"] == chosen["candidate"] and quantization["fp32_groups"] == ["layer.1"]
    assert SENSITIVE_NODE in quantization["nodes_to_exclude"]
    assert not any("layer.0" in node for node in quantization["nodes_to_exclude"])
    assert manifest["parity"] == parity and manifest["forced"] is False
    assert search["chosen"] == chosen["candidate"] and search["wall_s"] > 0
    # the chosen graph really keeps that MatMul in fp32 and quantises the rest
    import onnx

    graph = onnx.load(str(output / "model.onnx")).graph
    assert SENSITIVE_NODE in {node.name for node in graph.node if node.op_type == "MatMul"}
    assert manifest["int8_nodes"]["MatMulInteger"] >= 4


def test_no_search_judges_exactly_the_preset_and_fails_in_one_sentence(
    plain_dir: Path, tmp_path: Path, layer1_sensitive
) -> None:
    result = _cli("--model", str(plain_dir), "--output", str(tmp_path / "out"), "--no-search", *STRICT)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "Parity gate failed" in lines[0] and "'dynamic per-channel'" in lines[0]
    assert "--quantize none" in lines[0] and "--force" in lines[0]
    assert list(tmp_path.iterdir()) == []
    # callers (quickstart) tell a failed gate from other errors by its type, and fall back to fp32 on it
    from gamjeong.errors import QualityGateError
    from gamjeong.export.exporter import ExportConfig, export_model

    config = ExportConfig(
        model=plain_dir, output=tmp_path / "api", search=False, confident_margin=0.0, min_confident_agreement=0.95
    )
    with pytest.raises(QualityGateError, match="Parity gate failed"):
        export_model(config)


def test_no_search_per_tensor_is_published_as_asked(plain_dir: Path, tmp_path: Path) -> None:
    result = _cli("--model", str(plain_dir), "--output", str(tmp_path / "out"), "--no-search", "--per-tensor")
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path / "out")
    assert manifest["quantization"]["candidate"] == "dynamic per-tensor"
    assert manifest["quantization"]["per_channel"] is False
    assert manifest["parity"]["search"]["enabled"] is False
    assert len(manifest["parity"]["search"]["candidates"]) == 1


def test_an_exhausted_budget_names_the_best_candidate_and_force_publishes_it(
    plain_dir: Path, tmp_path: Path, layer1_sensitive
) -> None:
    args = ["--model", str(plain_dir), "--max-candidates", "1", *STRICT]
    result = _cli(*args, "--output", str(tmp_path / "failed"))
    assert result.exit_code == 2 and "best of 1 candidates, 'dynamic per-channel'" in result.output
    # --force publishes whatever the gate says, so it spends no time on fp32 fallbacks
    result = _cli("--model", str(plain_dir), *STRICT, "--output", str(tmp_path / "forced"), "--force")
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path / "forced")
    assert manifest["forced"] is True and manifest["parity"]["passed"] is False
    assert manifest["parity"]["reasons"] and manifest["quantization"]["candidate"] == "dynamic per-channel"
    search = manifest["parity"]["search"]
    assert len(search["candidates"]) == 1 and search["sensitivity"] is None and "--force" in search["notes"][0]


def test_putting_a_group_back_in_fp32_gives_the_graph_optimum_makes_with_it_excluded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The sensitivity pass's fast path (export/surgery.py) against Optimum itself: for the embeddings and for one
    encoder layer, the same operators, the same initializers and the same logits as quantising with the group's
    nodes in nodes_to_exclude."""
    import onnx
    import onnxruntime as ort

    from gamjeong.export.exporter import ExportConfig, export_model
    from gamjeong.export.quantize import CandidateSpec, activation_matmuls, quantize_candidate, weight_groups
    from gamjeong.export.surgery import keep_in_fp32
    from gamjeong.export.targets import resolve_target

    fp32_path = (
        export_model(ExportConfig(model=tiny_model_dir, output=tmp_path / "fp32", quantize="none")) / "model.onnx"
    )
    target, products = resolve_target("avx2", quantize="int8"), activation_matmuls(fp32_path)
    base_path, info = quantize_candidate(
        fp32_path, tmp_path / "base", CandidateSpec(name="base"), target, None, products
    )
    groups = weight_groups(fp32_path, [str(op) for op in info["operators"]])
    assert {"embeddings", "layer.0", "layer.1"} <= set(groups)
    fp32, base = onnx.load(str(fp32_path)), onnx.load(str(base_path))
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, 1000, (3, 11)), "attention_mask": np.ones((3, 11), dtype=np.int64)}
    for group in ("embeddings", "layer.1"):
        spec = CandidateSpec(name=group, fp32_groups=(group,), nodes_to_exclude=tuple(groups[group]))
        made_path, _ = quantize_candidate(fp32_path, tmp_path / group, spec, target, None, products)
        made, derived = onnx.load(str(made_path)), keep_in_fp32(base, fp32, groups[group])
        onnx.checker.check_model(derived)
        assert sorted(n.op_type for n in derived.graph.node) == sorted(n.op_type for n in made.graph.node)
        assert {i.name for i in derived.graph.initializer} == {i.name for i in made.graph.initializer}
        assert len(derived.graph.node) > len(base.graph.node) - 10 * len(groups[group])  # nothing else dropped
        fp32_nodes = {n.name: list(n.input) for n in fp32.graph.node}
        for node in groups[group]:  # each is the fp32 node again, reading the fp32 weight
            assert [list(n.input) for n in derived.graph.node if n.name == node] == [fp32_nodes[node]]
        logits = [ort.InferenceSession(m.SerializeToString()).run(None, feeds)[0] for m in (derived, made)]
        np.testing.assert_array_equal(logits[0], logits[1])
        baseline = ort.InferenceSession(base.SerializeToString()).run(None, feeds)[0]
        assert not np.array_equal(logits[0], baseline)  # the group really is fp32 again: the answers moved
