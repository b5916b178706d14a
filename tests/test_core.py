"""Labels, model loading errors and the PyTorch predictor."""

from __future__ import annotations

import numpy as np
import pytest

from gamjeong.errors import GamjeongError
from gamjeong.labels import ID2LABEL, LABEL_NAMES, LABEL_NAMES_KO, to_label_id, to_label_ids


def test_label_ids_are_fixed() -> None:
    assert LABEL_NAMES == ("joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral")
    assert LABEL_NAMES_KO == ("기쁨", "슬픔", "분노", "공포", "놀람", "혐오", "중립")
    assert ID2LABEL[6] == "neutral"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("행복", 0),
        ("기쁨", 0),
        ("JOY", 0),
        (" Sadness ", 1),
        ("분노", 2),
        ("공포", 3),
        ("놀람", 4),
        ("혐오", 5),
        ("중립", 6),
        (6, 6),
        (3.0, 3),
    ],
)
def test_aliases(raw: object, expected: int) -> None:
    assert to_label_id(raw) == expected


def test_unknown_labels_are_listed_with_accepted_names() -> None:
    with pytest.raises(GamjeongError) as info:
        to_label_ids(["기쁨", "행복함", "bored", "bored"])
    message = str(info.value)
    assert "'bored'" in message and "'행복함'" in message and "기쁨" in message and "joy" in message


def test_missing_hub_model_is_one_sentence(tmp_path) -> None:
    from gamjeong.modeling import load_base_model_for_training, load_tokenizer

    with pytest.raises(GamjeongError, match="--base-model"):
        load_tokenizer("gamjeong-test/does-not-exist")
    with pytest.raises(GamjeongError, match="--base-model"):
        load_base_model_for_training("gamjeong-test/does-not-exist")


def test_torch_predictor_batches_like_single_calls(tiny_model_dir) -> None:
    from gamjeong.predictor import TorchPredictor, load_predictor

    predictor = load_predictor(tiny_model_dir)
    assert isinstance(predictor, TorchPredictor)
    texts = ["오늘 정말 행복해요", "헐", "밤길이 너무 무서워요 " * 3]
    batched = predictor.predict_proba(texts, batch_size=8)
    single = np.stack([predictor.predict_proba([t])[0] for t in texts])
    assert batched.shape == (3, 7)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_truncation_is_flagged(tiny_model_dir) -> None:
    from gamjeong.predictor import load_predictor

    predictor = load_predictor(tiny_model_dir, max_length=8)
    short, long = predictor.encode(["안녕", "아주 긴 문장 " * 20])
    assert not short.truncated
    assert long.truncated and len(long.input_ids) == 8


def test_directory_without_our_labels_is_refused(tmp_path) -> None:
    from gamjeong.predictor import load_predictor

    (tmp_path / "config.json").write_text('{"id2label": {"0": "positive", "1": "negative"}}')
    with pytest.raises(GamjeongError, match="not a gamjeong emotion model"):
        load_predictor(tmp_path)


def test_unreachable_hub_fails_before_any_download(monkeypatch) -> None:
    import gamjeong.modeling as modeling

    monkeypatch.setattr(modeling, "_hub_offline_by_environment", lambda: False)
    monkeypatch.setattr(modeling, "_hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(GamjeongError, match=r"cannot be reached.*--base-model"):
        modeling.load_tokenizer("gamjeong-test/not-cached")
    assert modeling.hub_model_unavailable_reason(".") is None  # a local directory never needs the Hub


# --- manifest.json: one typed model, and manifests written before it still load ------------------------------------
# Written by `gamjeong export` before the typed Manifest existed (trimmed: three files, ten parity figures).
MANIFEST_WRITTEN_BEFORE_THE_TYPED_MODEL = {
    "format_version": 1,
    "created_at": "2026-11-25T14:37:45+00:00",
    "model_file": "model.onnx",
    "labels": ["joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral"],
    "source": {
        "model_dir": "/home/trainer/models/reviews",
        "weights_file": "model.safetensors",
        "weights_sha256": "0b63ba594aaa229ff844e3668676cfcbf7d720f84d1099c0819bc407841dc370",
        "weights_size": 470649364,
    },
    "task": "text-classification",
    "opset": 18,
    "inputs": {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"]},
    "outputs": ["logits"],
    "ir_version": 8,
    "nodes": 1400,
    "int8_nodes": {"DequantizeLinear": 3, "DynamicQuantizeLinear": 98, "MatMulInteger": 98},
    "quantization": {
        "mode": "int8",
        "candidate": "dynamic per-channel",
        "approach": "dynamic",
        "per_channel": True,
        "operators": ["Conv", "MatMul", "Attention"],
        "calibration": None,
        "latency_ms_1x32": 16.975,
    },
    "optimization": {"level": "none"},
    "target": {"name": "avx512_vnni", "requested": "auto", "reason": "the CPU flags include avx512_vnni"},
    "max_length": 64,
    "versions": {"python": "3.11.7", "gamjeong": "0.1.0", "torch": "2.13.0+cpu", "onnxruntime": "1.32.0"},
    "timings": {"export_s": 69.761, "reference_s": 115.375, "quantize_and_search_s": 34.695},
    "parity": {
        "source": "/work/dev/e5-600/dev-sample-1000.csv",
        "reference_backend": "pytorch-fp32",
        "candidate_backend": "onnx-int8",
        "texts": 999,
        "max_abs_prob_diff": 0.33343857526779175,
        "argmax_agreement": 0.9679679679679679,
        "confident_agreement": 0.9976689976689976,
        "threshold": 0.99,
        "passed": True,
        "reasons": [],
    },
    "forced": False,
    "files": {
        "config.json": {"sha256": "190b69a7fdbce04ac989f809201ff9fb777441415f249c4fdea210874fe9d767", "size": 990},
        "model.onnx": {"sha256": "29cea53f1c064f6a859de6eb639b43cdf1ac84407cd242af3ef685067166c85c", "size": 118480085},
    },
}


def test_a_manifest_written_before_the_typed_model_still_validates_and_round_trips(tmp_path) -> None:
    import json

    from gamjeong.artifacts import MANIFEST_FILE, read_manifest

    text = json.dumps(MANIFEST_WRITTEN_BEFORE_THE_TYPED_MODEL, ensure_ascii=False, indent=2) + "\n"
    (tmp_path / MANIFEST_FILE).write_text(text, encoding="utf-8")
    manifest = read_manifest(tmp_path)
    assert manifest.precision == "int8" and manifest.quantization.mode == "int8"
    assert manifest.parity.passed is True and manifest.parity.texts == 999
    assert manifest.files["model.onnx"].size == 118480085 and manifest.target.name == "avx512_vnni"
    assert manifest.source.model_dir == "/home/trainer/models/reviews"
    assert manifest.directory == tmp_path.resolve()
    # nothing is lost or added: the same document, the same text when written again
    assert manifest.as_json() == MANIFEST_WRITTEN_BEFORE_THE_TYPED_MODEL
    assert manifest["quantization"]["latency_ms_1x32"] == 16.975
    out = tmp_path / "again"
    out.mkdir()
    assert manifest.write(out).read_text(encoding="utf-8") == text


def test_an_older_sparser_manifest_loads_with_defaults(tmp_path) -> None:
    import json

    from gamjeong.artifacts import MANIFEST_FILE, find_manifest, read_manifest

    older = {"model_file": "model.onnx", "quantization": {"mode": "none"}, "parity": {"argmax_agreement": 1.0}}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**older, "files": {}, "model_name": "reviews"}))
    manifest = read_manifest(tmp_path)
    assert manifest.precision == "fp32" and manifest.forced is False and manifest.int8_nodes == {}
    assert manifest.as_json()["model_name"] == "reviews"  # unknown fields are kept
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(older))  # no files: not trusted, still described
    with pytest.raises(GamjeongError, match="lists no files"):
        read_manifest(tmp_path)
    assert find_manifest(tmp_path).parity.argmax_agreement == 1.0
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"files": {"model.onnx": "not a record"}}))
    with pytest.raises(GamjeongError, match="not a gamjeong manifest"):
        read_manifest(tmp_path)
