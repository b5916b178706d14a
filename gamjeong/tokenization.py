"""The serving tokenizer: a directory's tokenizer.json read by the `tokenizers` library alone.

Serving an exported directory must not import transformers (with torch behind it, ~400 MB of RSS and seconds of
start-up, measured in docs/benchmarks.md). A fast tokenizer of transformers is a thin wrapper around exactly this
Rust tokenizer; what the wrapper adds at load time comes from tokenizer_config.json (the length limit, the pad token,
the truncation side) and is read here the same way, so the ids are the same (tests/test_serving_install.py compares
both on the sample set, for a WordPiece and an XLM-R SentencePiece tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gamjeong.errors import GamjeongError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# transformers' "no limit" value of model_max_length (int(1e30)); anything this large means "not recorded".
_NO_LIMIT = 100_000


@dataclass(frozen=True)
class EncodedText:
    """Token ids of one text, already truncated to the predictor's max length."""

    input_ids: list[int]
    truncated: bool


def _token_content(value: Any) -> str | None:
    """A special token as saved by transformers: a string, or an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GamjeongError(f"'{path}' is not valid JSON; re-run `gamjeong export`.") from exc
    return data if isinstance(data, dict) else {}


class ServingTokenizer:
    """tokenizer.json + tokenizer_config.json, with the two attributes the predictors read from a transformers
    tokenizer (`model_max_length`, `pad_token_id`) and one batch encoder with truncation flags."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        model_max_length: int | None,
        pad_token_id: int | None,
        unk_token_id: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> None:
        self._tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self._max_length: int | None = None
        # transformers disables the padding a tokenizer.json may have saved and sets truncation per call; padding is
        # the predictor's job (to the longest text of each batch), so it stays off here too.
        tokenizer.no_padding()
        tokenizer.no_truncation()

    @classmethod
    def from_dir(cls, directory: str | Path) -> ServingTokenizer:
        from tokenizers import Tokenizer

        path = Path(directory)
        tokenizer_file = path / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise GamjeongError(
                f"'{path}' has no {TOKENIZER_FILE}; serving needs the fast tokenizer's file (re-run `gamjeong export`)."
            )
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a plain Exception for a malformed file
            raise GamjeongError(f"'{tokenizer_file}' cannot be read by the tokenizers library: {exc}") from exc
        config = _read_json(path / TOKENIZER_CONFIG_FILE)
        special = _read_json(path / SPECIAL_TOKENS_FILE)
        limit = config.get("model_max_length")

        def special_id(name: str) -> int | None:
            token = _token_content(config.get(name)) or _token_content(special.get(name))
            return tokenizer.token_to_id(token) if token is not None else None

        return cls(
            tokenizer,
            model_max_length=int(limit) if isinstance(limit, int | float) and 0 < limit < _NO_LIMIT else None,
            pad_token_id=special_id("pad_token"),
            unk_token_id=special_id("unk_token"),
            padding_side=str(config.get("padding_side", "right")),
            truncation_side=str(config.get("truncation_side", "right")),
        )

    def __len__(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def _truncate_to(self, max_length: int) -> None:
        if self._max_length != max_length:
            # The same call transformers makes for truncation=True, max_length=N (stride 0, longest first).
            self._tokenizer.enable_truncation(
                max_length, stride=0, strategy="longest_first", direction=self.truncation_side
            )
            self._max_length = max_length

    def encode_truncated(self, texts: Sequence[str], max_length: int) -> list[EncodedText]:
        """Ids with special tokens, cut to max_length; a text that did not fit is flagged (it has overflow)."""
        if not texts:
            return []
        self._truncate_to(max_length)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [EncodedText(list(e.ids), bool(e.overflowing)) for e in encodings]


def load_serving_tokenizer(directory: str | Path) -> ServingTokenizer:
    """The tokenizer of a trained or exported directory without transformers."""
    return ServingTokenizer.from_dir(directory)
