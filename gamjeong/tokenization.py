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
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from gamjeong.errors import GamjeongError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# transformers' "no limit" value of model_max_length (int(1e30)); anything this large means "not recorded".
_NO_LIMIT = 100_000
# A text longer than PRECUT_CHARS_PER_TOKEN characters per kept token is cut at a space before it is tokenised, and
# the cut must still give PRECUT_MARGIN tokens more than are kept (ServingTokenizer._encode_precut says why).
PRECUT_CHARS_PER_TOKEN = 6
PRECUT_MARGIN = 16
# Pre-tokenizers that split at every space, and normalisers that work within a word: what pre-cutting relies on.
_SPLITTING_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace"})
_LOCAL_NORMALIZERS = frozenset(
    {"BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Precompiled", "Replace", "Nmt"}
)


@dataclass(frozen=True, slots=True)  # slots: built once per text on the hot path, half the cost of a plain one
class EncodedText:
    """Token ids of one text, already truncated to the predictor's max length.

    `input_ids` is the list the tokenizer returns (the cheapest form to get out of `tokenizers`, and to pickle
    between processes); a 1-D integer array is accepted as well wherever EncodedText is read (`pad_rows`).
    """

    input_ids: Sequence[int]
    truncated: bool


def pad_rows(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [len(rows), longest row], padded on the right: the rows' lengths, one flat
    array of every id, and one boolean-mask assignment, with no Python loop over the rows (the few numpy calls are
    the whole cost of a small batch, so rows of one length, a single text among them, take one call)."""
    count = len(rows)
    lengths = list(map(len, rows))
    width = max(lengths, default=0)
    if count and min(lengths) == width:  # nothing to pad
        input_ids = np.array(rows, dtype=np.int64).reshape(count, width)
        return input_ids, np.ones_like(input_ids)
    mask = np.arange(width) < np.array(lengths)[:, None]
    input_ids = np.full((count, width), pad_token_id, dtype=np.int64)
    if count and isinstance(rows[0], np.ndarray):  # arrays: one copy (lists among them are converted too)
        flat = np.concatenate(rows).astype(np.int64, copy=False)
    else:  # lists (what the tokenizer gives), or anything iterable: one pass in C over all of them
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=sum(lengths))
    input_ids[mask] = flat  # row-major, like the flat array
    return input_ids, mask.astype(np.int64)


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
        self._truncation: tuple[int | None, str] = (None, truncation_side)  # what the Rust tokenizer is set to
        # transformers disables the padding a tokenizer.json may have saved and sets truncation per call; padding is
        # the predictor's job (to the longest text of each batch), so it stays off here too.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # Offsets are never read here: the batch encoder that skips them is ~15% cheaper (tokenizers >= 0.21).
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self._layout = _special_layout(tokenizer)
        self._precut = self._layout is not None and _precut_safe(tokenizer)

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

    def _truncate_to(self, max_length: int | None) -> None:
        if self._truncation != (max_length, self.truncation_side):
            if max_length is None:
                self._tokenizer.no_truncation()
            else:  # the same call transformers makes for truncation=True, max_length=N (stride 0, longest first)
                self._tokenizer.enable_truncation(
                    max_length, stride=0, strategy="longest_first", direction=self.truncation_side
                )
            self._truncation = (max_length, self.truncation_side)

    def encode_ids(self, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
        """Ids with special tokens, cut to max_length, and which texts did not fit: the batch form of
        `encode_truncated`, with no per-text Python object but the tokenizer's own id lists."""
        if not texts:
            return [], []
        texts = texts if isinstance(texts, list) else list(texts)
        layout = self._layout
        keep = max_length - (layout[0] + layout[1]) if layout is not None else 0
        if layout is None or keep < 1 or self.truncation_side not in ("right", "left"):
            # The tokenizer truncates; a text that did not fit has overflow (which it builds, in Python objects too).
            self._truncate_to(max_length)
            encodings = self._encode_batch(texts, add_special_tokens=True)
            return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]
        # Cut here, as the tokenizer would (its truncation cuts the text's tokens to max_length minus the special
        # tokens, then adds those): the same ids, without the overflow pieces it would build for every long text.
        self._truncate_to(None)
        if self._precut and self.truncation_side == "right":
            ids = self._encode_precut(texts, keep)
        else:
            ids = [e.ids for e in self._encode_batch(texts, add_special_tokens=True)]
        # The usual batch has no text too long: one pass in C says so (numpy calls would cost more on small batches)
        if max(map(len, ids)) <= max_length:
            return ids, [False] * len(ids)
        too_long = [len(row) > max_length for row in ids]
        prefix, suffix = layout
        for i, cut in enumerate(too_long):
            if cut:
                row = ids[i]
                end = len(row) - suffix
                if self.truncation_side == "right":
                    ids[i] = row[: prefix + keep] + row[end:]
                else:
                    ids[i] = row[:prefix] + row[end - keep :]
        return ids, too_long

    def _encode_precut(self, texts: list[str], keep: int) -> list[list[int]]:
        """Untruncated ids, except that a text far longer than `keep` tokens is first cut at a space, so the tokenizer
        does not tokenise thousands of characters only to drop them (a 10,000-character text: ~40 ms).

        The tokens of the words before a space do not depend on what follows it (the pre-tokenizer splits there and
        the normaliser works within words: `_precut_safe` checks both), so the cut text's tokens begin as the whole
        text's do; only its last word and trailing space may differ, and they lie beyond the kept tokens when the cut
        text has PRECUT_MARGIN tokens more than are kept. A cut text with fewer is encoded whole after all."""
        limit = PRECUT_CHARS_PER_TOKEN * (keep + PRECUT_MARGIN)
        work, cut = texts, []
        if max(map(len, texts)) <= limit:  # the usual batch: nothing to cut (one pass in C)
            return [e.ids for e in self._encode_batch(texts, add_special_tokens=True)]
        for i, text in enumerate(texts):
            space = text.find(" ", limit) if len(text) > limit else -1
            if space != -1:
                if not cut:
                    work = list(texts)  # the caller's list stays as it was
                work[i] = texts[i][:space]
                cut.append(i)
        ids = [e.ids for e in self._encode_batch(work, add_special_tokens=True)]
        enough = sum(self._layout or (0, 0)) + keep + PRECUT_MARGIN
        short = [i for i in cut if len(ids[i]) < enough]
        if short:  # sparse text (few tokens per character): the whole text after all
            whole = self._encode_batch([texts[i] for i in short], add_special_tokens=True)
            for i, encoding in zip(short, whole, strict=True):
                ids[i] = encoding.ids
        return ids

    def encode_truncated(self, texts: Sequence[str], max_length: int) -> list[EncodedText]:
        """Ids with special tokens, cut to max_length; a text that did not fit is flagged."""
        ids, truncated = self.encode_ids(texts, max_length)
        return list(map(EncodedText, ids, truncated))


def _special_layout(tokenizer: Any) -> tuple[int, int] | None:
    """(special tokens before, after) the text's own tokens in an encoded single text ([CLS] x [SEP]: (1, 1); <s> x
    </s>: (1, 1); no post-processor: (0, 0)), or None when the post-processor does anything else, in which case the
    tokenizer's own truncation is used."""
    try:
        added = tokenizer.num_special_tokens_to_add(False)
        probe = tokenizer.encode("a b 가나 1", add_special_tokens=True)
        plain = tokenizer.encode("a b 가나 1", add_special_tokens=False).ids
    except Exception:  # a post-processor this code does not know: the tokenizer's own truncation
        return None
    mask = probe.special_tokens_mask
    prefix = next((i for i, m in enumerate(mask) if not m), len(mask))
    suffix = next((i for i, m in enumerate(reversed(mask)) if not m), len(mask))
    if not plain or prefix + suffix != added or probe.ids[prefix : len(mask) - suffix] != plain:
        return None
    return prefix, suffix


def _component_types(component: Any, key: str) -> list[str] | None:
    """The types of a normaliser or pre-tokenizer and of the members of a Sequence of them (None: unreadable)."""
    try:
        state = json.loads(component.__getstate__())
    except Exception:  # a component without its JSON state: treated as unknown
        return None
    members = state.get(key) if state.get("type") == "Sequence" else [state]
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return None
    return [str(m.get("type")) for m in members]


def _precut_safe(tokenizer: Any) -> bool:
    """True when the tokens of the words before a space cannot depend on what follows it: the pre-tokenizer splits at
    spaces, the normaliser works within words (a Replace only on spaces), no added token holds a space."""
    pre = tokenizer.pre_tokenizer
    pre_types = _component_types(pre, "pretokenizers") if pre is not None else None
    if not pre_types or len(pre_types) != 1 or pre_types[0] not in _SPLITTING_PRE_TOKENIZERS:
        return False
    if pre_types[0] == "Metaspace" and not json.loads(pre.__getstate__()).get("split", True):
        return False
    if tokenizer.normalizer is not None:
        normalizer_types = _component_types(tokenizer.normalizer, "normalizers")
        if normalizer_types is None or not set(normalizer_types) <= _LOCAL_NORMALIZERS:
            return False
        if "Replace" in normalizer_types and not _replaces_spaces_only(tokenizer.normalizer):
            return False
    return not any(any(c.isspace() for c in t.content) for t in tokenizer.get_added_tokens_decoder().values())


def _replaces_spaces_only(normalizer: Any) -> bool:
    """XLM-R's normaliser folds runs of spaces (Replace " {2,}" -> " "); any other Replace is not known to be local."""
    state = json.loads(normalizer.__getstate__())
    members = state.get("normalizers", [state]) if state.get("type") == "Sequence" else [state]
    for member in members:
        if member.get("type") == "Replace":
            pattern = member.get("pattern", {})
            text = pattern.get("Regex", pattern.get("String"))
            if text not in (" {2,}", "  ") or member.get("content") != " ":
                return False
    return True


def load_serving_tokenizer(directory: str | Path) -> ServingTokenizer:
    """The tokenizer of a trained or exported directory without transformers."""
    return ServingTokenizer.from_dir(directory)
