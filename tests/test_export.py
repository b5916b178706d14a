"""`gamjeong export`: tiny DistilBERT -> fp32 / int8 / fp16 ONNX through Optimum, manifest, parity gate, bad input."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import KOREAN_SENTENCES, korean_rows
from typer.testing import CliRunner

from gamjeong.artifacts import MANIFEST_FILE, ONNX_MODEL_FILE, PARITY_FILE, file_sha256, verify_manifest
from gamjeong.errors import GamjeongError
from gamjeong.labels import LABEL_NAMES

TEXTS = [text for texts in KOREAN_SENTENCES.values() for text in texts]


def _export(source: Path, output: Path, **settings):
    from gamjeong.export.exporter import ExportConfig, export_model

    return export_model(ExportConfig(model=source, output=output, **settings))


def _run_cli(*args: str):
    from gamjeong.cli import app

    return CliRunner().invoke(app, ["export", *args])


def _error_line(result) -> str:
    """The CLI's message: exactly one `error: ...` line and no traceback."""
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The conftest tiny model plus the validation split a trained directory records (parity runs on it)."""
    import pandas as pd

    path = tmp_path_factory.mktemp("trained") / "model"
    shutil.copytree(tiny_model_dir, path)
    (path / "splits").mkdir()
    pd.DataFrame(korean_rows(), columns=["text", "label"]).to_csv(path / "splits" / "validation.csv", index=False)
    return path


@pytest.fixture(scope="module")
def fp32_dir(trained_dir: Path, tmp_path_factory) -> Path:
    return _export(trained_dir, tmp_path_factory.mktemp("exports") / "fp32", quantize="none")


@pytest.fixture(scope="module")
def int8_dir(trained_dir: Path, tmp_path_factory) -> Path:
    return _export(trained_dir, tmp_path_factory.mktemp("exports") / "int8")  # int8 is the CPU default


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))


# --- the exported directory ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fixture", "mode"), [("fp32_dir", "none"), ("int8_dir", "int8")])
def test_exported_dir_holds_model_tokenizer_config_manifest_and_parity(request, fixture: str, mode: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    trained_dir: Path = request.getfixturevalue("trained_dir")
    names = {p.name for p in path.iterdir()}
    assert {ONNX_MODEL_FILE, "config.json", "tokenizer.json", MANIFEST_FILE, PARITY_FILE} <= names
    assert not [n for n in names if n.endswith(".onnx") and n != ONNX_MODEL_FILE]  # no intermediates left around
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # the temporary directory is gone

    manifest = _manifest(path)
    assert manifest["quantization"]["mode"] == mode
    assert manifest["labels"] == list(LABEL_NAMES)
    assert manifest["source"]["weights_sha256"] == file_sha256(trained_dir / "model.safetensors")
    assert manifest["opset"] >= 11
    for dims in manifest["inputs"].values():  # dynamic batch and sequence axes
        assert all(isinstance(d, str) for d in dims)
    assert {"torch", "transformers", "optimum", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["forced"] is False
    # every file but the manifest is listed, with its real size and sha256
    assert set(manifest["files"]) == names - {MANIFEST_FILE}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": file_sha256(path / name), "size": (path / name).stat().st_size}
    assert json.loads((path / "config.json").read_text())["id2label"]["6"] == "neutral"


def test_graph_inputs_are_dynamic_in_the_onnx_file(int8_dir: Path) -> None:
    import onnx

    model = onnx.load(str(int8_dir / ONNX_MODEL_FILE))
    for graph_input in model.graph.input:
        assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]


def test_int8_is_dynamic_avx_quantised_and_smaller_than_fp32(fp32_dir: Path, int8_dir: Path) -> None:
    quantization = _manifest(int8_dir)["quantization"]
    assert quantization["approach"] == "dynamic"
    assert quantization["preset"].startswith("AutoQuantizationConfig.")
    assert "MatMul" in quantization["operators"]
    assert _manifest(int8_dir)["int8_nodes"]["MatMulInteger"] >= 8  # 2 layers x (q, k, v, out, 2 ffn) at least
    assert _manifest(fp32_dir)["int8_nodes"] == {}
    assert (int8_dir / ONNX_MODEL_FILE).stat().st_size < 0.8 * (fp32_dir / ONNX_MODEL_FILE).stat().st_size


@pytest.mark.parametrize("fixture", ["fp32_dir", "int8_dir"])
def test_parity_report_on_the_validation_split(request, fixture: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    parity = json.loads((path / PARITY_FILE).read_text(encoding="utf-8"))
    assert parity["texts"] == len(korean_rows())
    assert parity["source"].endswith("validation.csv")
    assert parity["passed"] is True and parity["argmax_agreement"] >= parity["threshold"]
    assert 0.0 <= parity["mean_abs_prob_diff"] <= parity["max_abs_prob_diff"] < 0.05
    assert parity["reference_backend"] == "pytorch-fp32"
    assert set(parity["reference"]) == set(parity["candidate"]) == {"accuracy", "macro_f1"}
    assert parity["disagreements"] == 0 and parity["max_reference_margin_of_disagreements"] == 0.0
    assert parity["rule"] == ("agreement" if fixture == "fp32_dir" else "quality") and parity["reasons"] == []
    assert parity["near_ties"] + parity["confident_texts"] == parity["texts"]
    assert _manifest(path)["parity"]["argmax_agreement"] == parity["argmax_agreement"]


def test_compare_predictors_measures_differences_agreement_and_quality(tiny_tokenizer) -> None:
    from gamjeong.export.parity import ParityTexts, compare_predictors
    from gamjeong.predictor import Predictor

    class FixedLogits(Predictor):
        backend, device = "fixed", "cpu"

        def __init__(self, rows: list[list[float]]) -> None:
            super().__init__(tiny_tokenizer)
            self.rows = {i: np.array(r, dtype=np.float32) for i, r in enumerate(rows)}

        def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
            # each text is a single digit naming its row, so the batch order does not matter
            return np.stack([self.rows[int(self.tokenizer.decode(ids[1:2]))] for ids in input_ids])

    confident, tied = [5.0, 0, 0, 0, 0, 0, 0], [1.0, 1.001, 0, 0, 0, 0, 0]
    reference = FixedLogits([confident, tied, confident])
    candidate = FixedLogits([confident, [1.001, 1.0, 0, 0, 0, 0, 0], confident])
    report = compare_predictors(reference, candidate, ParityTexts(["0", "1", "2"], [0, 1, 0], "test"))
    assert report["argmax_agreement"] == pytest.approx(2 / 3) and report["disagreements"] == 1
    assert 0.0 < report["max_abs_prob_diff"] < 0.001
    assert report["max_reference_margin_of_disagreements"] < 0.001
    assert report["reference"]["accuracy"] == 1.0 and report["candidate"]["accuracy"] == pytest.approx(2 / 3)


def test_load_predictor_serves_both_exports_like_pytorch(trained_dir: Path, fp32_dir: Path, int8_dir: Path) -> None:
    from gamjeong.predictor import OnnxPredictor, load_predictor

    torch_probs = load_predictor(trained_dir).predict_proba(TEXTS)
    fp32 = load_predictor(fp32_dir)
    int8 = load_predictor(int8_dir)
    assert isinstance(fp32, OnnxPredictor) and isinstance(int8, OnnxPredictor)
    assert (fp32.backend, int8.backend) == ("onnx-fp32", "onnx-int8")
    fp32_probs = fp32.predict_proba(TEXTS)
    np.testing.assert_allclose(fp32_probs, torch_probs, atol=1e-5)
    assert (fp32_probs.argmax(1) == torch_probs.argmax(1)).all()
    np.testing.assert_allclose(int8.predict_proba(TEXTS), torch_probs, atol=0.02)


def test_fp16_export_runs_its_parity_on_cpu_without_a_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    from gamjeong.predictor import load_predictor
    from gamjeong.samples import load_samples

    path = _export(tiny_model_dir, tmp_path / "fp16", quantize="fp16")  # no splits/: parity on the sample set
    manifest = _manifest(path)
    assert manifest["parity"]["source"].startswith("built-in Korean sample set")
    # the whole sample set, or a seeded sample of --max-parity-texts of it (1,231 sentences since issue 22)
    from gamjeong.export.exporter import ExportConfig

    limit = ExportConfig.model_fields["max_parity_texts"].default
    assert manifest["parity"]["texts"] == min(len(load_samples()), limit)
    assert manifest["quantization"]["mode"] == "fp16"
    assert manifest["target"]["name"] == "cuda"
    assert manifest["optimization"]["fp16"] is True
    # fp16 for CUDA defaults to O4: the fused attention replaces the shape arithmetic ONNX Runtime puts on the CPU
    assert (manifest["optimization"]["level"], manifest["optimization"]["requested"]) == ("O4", "O4")
    ops = {node.op_type for node in onnx.load(str(path / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops and "ConstantOfShape" not in ops, ops
    assert manifest["parity"]["passed"] is True
    assert load_predictor(path).backend.startswith("onnx-fp16")


def test_static_int8_with_calibration_data_after_o2_optimisation(trained_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    calibration = tmp_path / "calibration.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(calibration, index=False)
    path = _export(
        trained_dir,
        tmp_path / "static",
        optimize="O2",
        target="avx2",
        calibration_data=calibration,
        calibration_samples=10,
        parity_data=calibration,  # unlabelled: agreement on confident texts only (a random model has none)
    )
    manifest = _manifest(path)
    assert manifest["optimization"]["level"] == "O2"
    assert manifest["quantization"]["approach"] == "static"
    assert manifest["quantization"]["calibration"]["texts"] == 10
    assert manifest["parity"]["texts"] == len(TEXTS) and "reference" not in manifest["parity"]
    # static is the fastest expected candidate, so the search judged it first and kept it when it passed
    search = manifest["parity"]["search"]
    assert [c["approach"] for c in search["candidates"]] == ["static"] and search["chosen"] == "static per-channel"
    assert any("SmoothQuant" in note for note in search["notes"])
    assert manifest["target"] == {"name": "avx2", "requested": "avx2", "reason": "requested with --target"}
    verify_manifest(path)


def test_static_int8_of_a_bert_graph_whose_tokenizer_gives_no_token_type_ids(tiny_tokenizer, tmp_path: Path) -> None:
    """multilingual-e5 (BERT graph, XLM-R tokenizer): calibration must still feed the graph's token_type_ids."""
    import pandas as pd
    from transformers import BertConfig, BertForSequenceClassification

    from gamjeong.labels import ID2LABEL, LABEL2ID

    source = tmp_path / "bert"
    config = BertConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=7, id2label=ID2LABEL, label2id=LABEL2ID,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    tokenizer_config = source / "tokenizer_config.json"  # as XLM-R's tokenizer: no token_type_ids
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    tokenizer_config.write_text(json.dumps({**settings, "model_input_names": ["input_ids", "attention_mask"]}))
    calibration = tmp_path / "calibration.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(calibration, index=False)
    path = _export(
        source, tmp_path / "static", calibration_data=calibration, calibration_samples=8, search=False, force=True
    )  # a random model says nothing about static int8 accuracy: export exactly the preset, whatever the gate says
    assert _manifest(path)["quantization"]["approach"] == "static"


# --- the manifest protects the served model -----------------------------------------------------------------------
def test_verify_manifest_rejects_tampered_and_truncated_files(int8_dir: Path, tmp_path: Path) -> None:
    from gamjeong.predictor import load_predictor

    assert verify_manifest(int8_dir)["quantization"]["mode"] == "int8"
    tampered = shutil.copytree(int8_dir, tmp_path / "tampered")
    config = tampered / "config.json"
    config.write_text(config.read_text().replace("neutral", "neutrAL"))  # same size, other content
    with pytest.raises(GamjeongError, match=r"config\.json has a different sha256"):
        verify_manifest(tampered)

    truncated = shutil.copytree(int8_dir, tmp_path / "truncated")
    data = (truncated / ONNX_MODEL_FILE).read_bytes()
    (truncated / ONNX_MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(GamjeongError, match=r"does not match its manifest\.json \(model\.onnx has"):
        load_predictor(truncated)

    missing = shutil.copytree(int8_dir, tmp_path / "no-manifest")
    (missing / MANIFEST_FILE).unlink()
    with pytest.raises(GamjeongError, match=r"has no manifest\.json"):
        load_predictor(missing)


def test_create_session_refuses_a_corrupt_onnx_file(int8_dir: Path, tmp_path: Path) -> None:
    from gamjeong.onnx_runtime import create_session

    corrupt = tmp_path / ONNX_MODEL_FILE
    data = (int8_dir / ONNX_MODEL_FILE).read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    with pytest.raises(GamjeongError, match="corrupt or truncated"):
        create_session(corrupt)
    from gamjeong.onnx_runtime import cuda_available

    if not cuda_available():
        with pytest.raises(GamjeongError, match=r"CUDAExecutionProvider is not available .* use --provider cpu"):
            create_session(int8_dir / ONNX_MODEL_FILE, provider="cuda")


# --- the parity gate ----------------------------------------------------------------------------------------------
def _disagreeing_parity(monkeypatch) -> None:
    """Make every ONNX answer differ from PyTorch's (a tiny random model never disagrees on its own)."""
    from gamjeong.predictor import OnnxPredictor

    real = OnnxPredictor.predict_proba

    def shifted(self, texts, batch_size=32):
        return np.roll(real(self, texts, batch_size), 1, axis=1)

    monkeypatch.setattr(OnnxPredictor, "predict_proba", shifted)


def test_parity_gate_failure_exits_non_zero_and_leaves_nothing(trained_dir: Path, tmp_path: Path, monkeypatch) -> None:
    _disagreeing_parity(monkeypatch)
    output = tmp_path / "out"
    # every text counts as confident: the random model's near-uniform probabilities have no 0.2 margins
    result = _run_cli("--model", str(trained_dir), "--output", str(output), "--confident-margin", "0", "--no-search")
    assert result.exit_code == 2
    assert "Parity gate failed" in _error_line(result) and "--force" in _error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_force_publishes_a_failed_gate_and_marks_the_manifest(trained_dir: Path, tmp_path: Path, monkeypatch) -> None:
    _disagreeing_parity(monkeypatch)
    result = _run_cli("--model", str(trained_dir), "--output", str(tmp_path / "out"), "--quantize", "none", "--force")
    assert result.exit_code == 0, result.output
    manifest = _manifest(tmp_path / "out")
    assert manifest["forced"] is True and manifest["parity"]["passed"] is False
    assert manifest["parity"]["threshold"] == 0.995


# --- bad input: one sentence, non-zero exit, no output left behind ------------------------------------------------
def _no_head_dir(path: Path, tiny_tokenizer) -> Path:
    from transformers import DistilBertModel

    from gamjeong.modeling import distilbert_config

    DistilBertModel(distilbert_config(len(tiny_tokenizer), real_size=False)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _wrong_labels_dir(path: Path, trained_dir: Path) -> Path:
    shutil.copytree(trained_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "negative"}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "has no config.json"),
        ("no-weights", "has no model weights"),
        ("wrong-labels", "not a gamjeong emotion model"),
        ("no-head", "no sequence-classification head"),
        ("unknown-target", "Invalid --target 'tpu'"),
        ("unknown-quantize", "Invalid --quantize 'int4'"),
        ("int8-for-cuda", "int8 quantisation is for CPU targets"),
        ("fp16-for-cpu", "fp16 models are for CUDA GPUs"),
        ("calibration-without-int8", "--calibration-data is for static int8"),
        ("output-not-empty", "already exists and is not empty"),
    ],
)
def test_bad_input_is_one_sentence(case: str, expected: str, trained_dir: Path, tiny_tokenizer, tmp_path: Path) -> None:
    model, extra = trained_dir, []
    if case == "missing":
        model = tmp_path / "nowhere"
    elif case == "empty":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "no-weights":
        model = shutil.copytree(trained_dir, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    elif case == "wrong-labels":
        model = _wrong_labels_dir(tmp_path / "wrong", trained_dir)
    elif case == "no-head":
        model = _no_head_dir(tmp_path / "base", tiny_tokenizer)
    extra = {
        "unknown-target": ["--target", "tpu"],
        "unknown-quantize": ["--quantize", "int4"],
        "int8-for-cuda": ["--target", "cuda", "--quantize", "int8"],
        "fp16-for-cpu": ["--target", "avx2", "--quantize", "fp16"],
        "calibration-without-int8": [
            "--quantize",
            "none",
            "--calibration-data",
            str(trained_dir / "splits" / "validation.csv"),
        ],
    }.get(case, [])
    output = tmp_path / "out"
    if case == "output-not-empty":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _run_cli("--model", str(model), "--output", str(output), *extra)
    assert result.exit_code == 2, result.output
    assert expected in _error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output and no temporary directory


def test_full_disk_is_one_sentence_and_leaves_no_output(trained_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from gamjeong.export import exporter

    def disk_full(path: Path, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(exporter, "write_json", disk_full)
    result = _run_cli("--model", str(trained_dir), "--output", str(tmp_path / "out"), "--quantize", "none")
    assert result.exit_code == 2
    assert "disk is full" in _error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_sentence(trained_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_cli("--model", str(trained_dir), "--output", str(blocker / "out"))
    assert result.exit_code == 2
    assert "Could not write the export" in _error_line(result)


def test_overwrite_replaces_an_existing_export(trained_dir: Path, fp32_dir: Path, tmp_path: Path) -> None:
    output = shutil.copytree(fp32_dir, tmp_path / "out")
    result = _run_cli("--model", str(trained_dir), "--output", str(output), "--overwrite")
    assert result.exit_code == 0, result.output
    assert _manifest(output)["quantization"]["mode"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- targets ------------------------------------------------------------------------------------------------------
def test_auto_target_reads_the_machine() -> None:
    from gamjeong.export.targets import detect_target

    assert detect_target(cuda_present=True).name == "cuda"
    assert detect_target(cuda_present=False, machine="aarch64").name == "arm64"
    vnni = detect_target(cuda_present=False, machine="x86_64", cpu_flags={"avx2", "avx512f", "avx512_vnni"})
    assert vnni.name == "avx512_vnni" and "avx512_vnni" in vnni.reason
    assert detect_target(cuda_present=False, machine="x86_64", cpu_flags={"sse4_2", "avx2"}).name == "avx2"


@pytest.mark.parametrize(("target", "weights"), [("avx512_vnni", "QInt8"), ("avx2", "QUInt8"), ("arm64", "QInt8")])
def test_each_cpu_target_gets_its_optimum_preset(target: str, weights: str) -> None:
    from gamjeong.export.targets import STATIC_OPERATORS, int8_quantization_config

    dynamic = int8_quantization_config(target, is_static=False, per_channel=False)
    assert (dynamic.is_static, dynamic.weights_dtype.name, dynamic.activations_dtype.name) == (False, weights, "QUInt8")
    static = int8_quantization_config(target, is_static=True, per_channel=True)
    assert static.is_static and static.per_channel and list(static.operators_to_quantize) == list(STATIC_OPERATORS)
    with pytest.raises(GamjeongError, match="CPU targets"):
        int8_quantization_config("cuda", is_static=False, per_channel=False)


@pytest.mark.parametrize("flags", [["--target", "avx2"], ["--target", "cuda", "--quantize", "none"]])
def test_o4_is_for_fp16_on_cuda(flags: list[str], trained_dir: Path, tmp_path: Path) -> None:
    result = _run_cli("--model", str(trained_dir), "--output", str(tmp_path / "o4"), "--optimize", "O4", *flags)
    assert result.exit_code == 2
    assert "O4" in _error_line(result) and "CUDA" in _error_line(result)


def test_the_optimisation_default_is_o4_for_fp16_on_cuda_only() -> None:
    from gamjeong.export.exporter import ExportConfig
    from gamjeong.export.targets import ResolvedTarget

    cuda, avx2 = ResolvedTarget("cuda", "cuda", "test"), ResolvedTarget("avx2", "avx2", "test")
    config = ExportConfig(model=Path("m"), output=Path("o"))
    assert config.optimization_level(cuda, "fp16") == "O4"
    assert config.optimization_level(cuda, "none") == "none"
    assert config.optimization_level(avx2, "int8") == "none"
    assert ExportConfig(model=Path("m"), output=Path("o"), optimize="O1").optimization_level(cuda, "fp16") == "O1"


# --- `gamjeong evaluate` takes an exported directory through the same code path ---------------------------------
def test_evaluate_on_the_onnx_dir_agrees_with_the_pytorch_dir(
    trained_dir: Path, fp32_dir: Path, int8_dir: Path
) -> None:
    from gamjeong.cli import app

    data = str(trained_dir / "splits" / "validation.csv")
    metrics = {}
    for name, path in (("pytorch", trained_dir), ("fp32", fp32_dir), ("int8", int8_dir)):
        result = CliRunner().invoke(app, ["evaluate", "--model", str(path), "--data", data, "--json"])
        assert result.exit_code == 0, result.output
        metrics[name] = json.loads(result.stdout)
    assert (metrics["pytorch"]["backend"], metrics["fp32"]["backend"]) == ("pytorch-fp32", "onnx-fp32")
    assert metrics["int8"]["backend"] == "onnx-int8"
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert metrics["fp32"][key] == metrics["pytorch"][key]
    assert abs(metrics["int8"]["accuracy"] - metrics["pytorch"]["accuracy"]) <= 1 / len(korean_rows())
