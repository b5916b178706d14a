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
