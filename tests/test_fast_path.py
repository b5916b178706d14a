"""Issue 20's fast path from texts to the model's arrays, and the CUDA session's parts that run on the CPU too.

- `pad_rows` (vectorised padding) gives what a row-by-row loop gives, for lists, arrays and mixes of them;
- the serving tokenizer's own truncation (no overflow pieces) gives the ids and flags the tokenizer's truncation gives,
  cut on the right and on the left, for WordPiece and SentencePiece tokenizers and unusual special-token layouts;
- OnnxPredictor's I/O binding (on by default for CUDA only) answers exactly as the plain run;
- `placement_report` reads back the graph a session runs (no Memcpy nodes on the CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MBERT_TOKENIZER_DIR

from gamjeong.predictor import EncodedText, Predictor
from gamjeong.tokenization import ServingTokenizer, load_serving_tokenizer, pad_rows


class _Encoder(Predictor):
    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _reference_pad(rows: list, pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@pytest.mark.parametrize(
    "rows",
    [
        [[101, 5, 6, 102], [101, 102], [101, 7, 8, 9, 10, 102]],
        [np.array([101, 5, 102]), np.array([101, 102], dtype=np.int32), np.array([101, 1, 2, 3, 102])],
        [np.array([101, 5, 102]), [101, 9, 9, 9, 102], np.array([], dtype=np.int64)],
        [[1, 2, 3], [], [4]],
        [[], []],
        [[7]],
    ],
)
def test_pad_rows_gives_what_a_row_loop_gives(rows: list) -> None:
    ids, mask = pad_rows(rows, pad_token_id=3)
    expected_ids, expected_mask = _reference_pad(rows, 3)
    assert ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(mask, expected_mask)


def test_pad_rows_of_no_rows() -> None:
    ids, mask = pad_rows([], pad_token_id=0)
    assert ids.shape == mask.shape == (0, 0)


def test_the_predictor_pads_array_rows_like_list_rows(tiny_model_dir: Path) -> None:
    tokenizer = load_serving_tokenizer(tiny_model_dir)
    predictor = _Encoder(tokenizer, 16)
    encoded = predictor.encode(["오늘 정말 행복해요", "헐", "밤길이 너무 무서워요 " * 5])
    as_arrays = [EncodedText(np.asarray(e.input_ids, dtype=np.int64), e.truncated) for e in encoded]
    for a, b in zip(predictor.pad(encoded), predictor.pad(as_arrays), strict=True):
        np.testing.assert_array_equal(a, b)
    assert predictor.pad(encoded)[0].shape == (3, 16)


def test_encoded_texts_survive_pickling(tiny_model_dir: Path) -> None:
    """What the server's front-end processes ship to the batcher: the ids and the flag, unchanged."""
    import pickle

    encoded = _Encoder(load_serving_tokenizer(tiny_model_dir), 8).encode(["헐", "밤길이 너무 무서워요 " * 5])
    assert pickle.loads(pickle.dumps(encoded)) == encoded
    assert [e.truncated for e in encoded] == [False, True]


# --- truncation ---------------------------------------------------------------------------------------------------
def _long_texts() -> list[str]:
    from gamjeong.samples import sample_texts

    texts = list(sample_texts())
    joined = [" ".join(texts[i : i + 7]) for i in range(0, len(texts), 7)]
    return [*texts[:40], *joined, "", " ", "헐", "[SEP] 안녕 [SEP]", "ㅋ" * 400, "가나다라마바사 " * 120]


def _tokenizer_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from test_serving_install import E5_DIR, _local_xlmr_tokenizer

    dirs = [tiny_model_dir, _local_xlmr_tokenizer(tmp_path_factory.mktemp("xlmr"))]
    if MBERT_TOKENIZER_DIR.is_dir():
        from gamjeong.modeling import load_tokenizer

        saved = tmp_path_factory.mktemp("mbert")
        load_tokenizer(MBERT_TOKENIZER_DIR).save_pretrained(str(saved))
        dirs.append(saved)
    if E5_DIR.is_dir():
        dirs.append(E5_DIR)
    return dirs


def _by_the_tokenizer(tokenizer: ServingTokenizer, texts: list[str], max_length: int) -> list[EncodedText]:
    """The tokenizer's own truncation (the path taken when the special-token layout is unknown)."""
    layout = tokenizer._layout
    tokenizer._layout = None
    try:
        return tokenizer.encode_truncated(texts, max_length)
    finally:
        tokenizer._layout = layout


@pytest.mark.parametrize("side", ["right", "left"])
def test_own_truncation_gives_the_tokenizers_ids_and_flags(
    side: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    texts = _long_texts()
    for directory in _tokenizer_dirs(tiny_model_dir, tmp_path_factory):
        tokenizer = load_serving_tokenizer(directory)
        tokenizer.truncation_side = side
        assert tokenizer._layout == (1, 1), directory  # [CLS] x [SEP] and <s> x </s>
        for max_length in (3, 8, 32, 128):
            ours = tokenizer.encode_truncated(texts, max_length)
            theirs = _by_the_tokenizer(tokenizer, texts, max_length)
            assert ours == theirs, (directory, side, max_length)
            assert any(e.truncated for e in ours) and not all(e.truncated for e in ours)
            assert max(len(e.input_ids) for e in ours) == max_length


def test_left_truncation_agrees_with_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from gamjeong.modeling import load_tokenizer

    directory = tmp_path / "left"
    load_tokenizer(tiny_model_dir).save_pretrained(str(directory))
    config_file = directory / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "truncation_side": "left"}))
    before, after = load_tokenizer(directory), load_serving_tokenizer(directory)
    assert (before.truncation_side, after.truncation_side) == ("left", "left")
    texts = _long_texts()
    assert _Encoder(after, 8).encode(texts) == _Encoder(before, 8).encode(texts)


@pytest.mark.parametrize(
    ("template", "layout"),
    [("[CLS] [CLS] $A", (2, 0)), ("$A [SEP] [SEP]", (0, 2)), ("$A", (0, 0)), (None, (0, 0))],
)
def test_other_special_token_layouts(template: str | None, layout: tuple[int, int], tiny_tokenizer) -> None:
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = (
        None
        if template is None
        else processors.TemplateProcessing(
            single=template, special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
        )
    )
    tokenizer = ServingTokenizer(backend, model_max_length=64, pad_token_id=0)
    assert tokenizer._layout == layout
    texts = _long_texts()
    for max_length in (3, 9, 40):
        assert tokenizer.encode_truncated(texts, max_length) == _by_the_tokenizer(tokenizer, texts, max_length)


def _very_long_texts() -> list[str]:
    """Texts far longer than the kept tokens (cut at a space before tokenising), joined in every way that could
    make the cut text tokenise differently: runs of spaces, newlines, tabs, special tokens, emoji, ideographic space;
    and sparse ones (a 120-character word is one [UNK] to WordPiece) that are encoded whole after all."""
    from gamjeong.samples import sample_texts

    texts = list(sample_texts())
    joins = [" ", "  ", "\n", " \n\n ", "\t", " [SEP] ", " <mask> ", " 😂 ", "\u3000", "   .  "]
    return [
        *(join.join(texts[i * 40 : i * 40 + 40]) for i, join in enumerate(joins)),
        " ".join(["가" * 120] * 30),
        "a " * 2000,
        "  " + "행복해요 " * 500 + "  ",
    ]


def test_very_long_texts_are_cut_before_tokenising_with_the_same_ids(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    texts = _very_long_texts()
    for directory in _tokenizer_dirs(tiny_model_dir, tmp_path_factory):
        tokenizer = load_serving_tokenizer(directory)
        assert tokenizer._precut, directory
        seen: list[int] = []

        def recording(batch: list[str], seen: list[int] = seen, encode=tokenizer._encode_batch, **kwargs: object):
            seen.extend(len(t) for t in batch)
            return encode(batch, **kwargs)

        tokenizer._encode_batch = recording
        for max_length in (8, 32, 128):
            seen.clear()
            ours = tokenizer.encode_truncated(texts, max_length)
            assert ours == _by_the_tokenizer(tokenizer, texts, max_length), (directory, max_length)
            assert all(e.truncated for e in ours[:10])
            assert min(seen[: len(texts)]) < max(len(t) for t in texts) / 4  # the long ones were cut...
            assert len(seen) > len(texts)  # ...and the sparse ones encoded whole after all


def test_pre_cutting_is_off_where_a_cut_could_change_the_tokens(tiny_tokenizer) -> None:
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

    from gamjeong.tokenization import _precut_safe

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    assert _precut_safe(backend)
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex("a b"), "ab")])
    assert not _precut_safe(backend)  # a rule that spans a space
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    assert not _precut_safe(backend)  # no split at spaces: one "word" for the whole text
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not _precut_safe(backend)  # not known here
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    assert _precut_safe(backend)
    backend.add_tokens(["행복 해요"])
    assert not _precut_safe(backend)  # an added token with a space in it


def test_a_too_short_max_length_is_left_to_the_tokenizer(tiny_model_dir: Path) -> None:
    tokenizer = load_serving_tokenizer(tiny_model_dir)
    encoded = tokenizer.encode_truncated(["오늘 정말 행복해요", "헐"], 2)  # room for [CLS] and [SEP] only
    assert encoded == _by_the_tokenizer(tokenizer, ["오늘 정말 행복해요", "헐"], 2)
    assert [len(e.input_ids) for e in encoded] == [2, 2] and all(e.truncated for e in encoded)


# --- the ONNX Runtime session -------------------------------------------------------------------------------------
def test_io_binding_answers_as_the_plain_run(tiny_int8_dir: Path) -> None:
    from gamjeong.predictor import OnnxPredictor, load_predictor
    from gamjeong.samples import sample_texts

    plain = load_predictor(tiny_int8_dir)
    assert isinstance(plain, OnnxPredictor)
    assert plain.io_binding is False  # the default on the CPU provider
    bound = load_predictor(tiny_int8_dir, io_binding=True)
    assert bound.io_binding and bound.info()["io_binding"] is True
    texts = list(sample_texts())[:70]
    expected = plain.predict_proba(texts, batch_size=16)
    np.testing.assert_array_equal(bound.predict_proba(texts, batch_size=16), expected)
    ids, mask = bound.pad(bound.encode(texts[:5]))
    logits = bound.logits(ids, mask)
    assert logits.dtype == np.float32 and logits.shape == (5, 7) and logits.flags.c_contiguous
    # where the graph does not fix the logits' width, ONNX Runtime's own output is copied out instead
    bound._logits_width = None
    np.testing.assert_array_equal(bound.logits(ids, mask), logits)
    # the server's other model instances keep the choice
    other = bound.another_session(1, None)
    assert other is not None and other.io_binding is True
    np.testing.assert_array_equal(other.predict_proba(texts, batch_size=16), expected)


def test_placement_report_reads_the_graph_the_session_runs(tiny_int8_dir: Path) -> None:
    from gamjeong.onnx_runtime import placement_report

    report = placement_report(tiny_int8_dir / "model.onnx", provider="cpu")
    assert report["provider"] == "CPUExecutionProvider"
    assert report["memcpy_nodes"] == 0 and report["memcpy"] == {}
    operators = report["operators"]
    assert isinstance(operators, dict) and report["nodes"] == sum(operators.values()) > 0
    assert "MatMulInteger" in operators or "DynamicQuantizeMatMul" in operators  # the int8 graph, as optimised
