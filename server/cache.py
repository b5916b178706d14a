"""A bounded LRU of results for repeated texts ("ㅋㅋㅋ", "안녕하세요", "헐" in a chat feed), answered without queueing.

The key is (normalised text, truncation mode, max input length). "Normalised" means the loaded tokenizer's own
normalizer (tokenizer.json's: NFKC for XLM-R, BERT's clean-up for WordPiece...), so two texts share an entry only
when the model would see the same characters; a text holding a special token's spelling ("[SEP]", "<s>") keeps its
raw form, because special tokens are matched before normalisation. One cache belongs to one loaded model (it is made
with the model and dies with it), so an entry can never answer for another model.

It lives on the event loop's thread only (lookups and inserts happen in the servicer's coroutines), so it needs no
lock. Entries are small (seven float32s and a few ints), so 10,000 of them are a few MB.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from gamjeong.server.metrics import ServerMetrics

# Texts longer than this are neither looked up nor stored: they rarely repeat, and normalising them on the event loop
# would cost more than it saves.
MAX_CACHED_CHARS = 512


@dataclass(frozen=True)
class CachedResult:
    probabilities: np.ndarray  # float32 [7], read-only
    num_tokens: int
    truncated: bool
    model_version: str = ""


class ResultCache:
    """LRU of CachedResult by (normalised text, truncation mode, max_length); `max_entries` 0 is never built."""

    def __init__(self, max_entries: int, tokenizer: Any, max_length: int, metrics: ServerMetrics) -> None:
        if max_entries < 1:
            raise ValueError("a ResultCache needs room for at least one entry")
        self.max_entries = max_entries
        self.max_length = max_length
        self._metrics = metrics
        self._entries: OrderedDict[tuple[str, bool, int], CachedResult] = OrderedDict()
        self._normalizer, self._specials = _normalizer_of(tokenizer)
        metrics.cache_capacity.set(max_entries)

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, text: str, refuse_truncation: bool) -> tuple[str, bool, int] | None:
        """The entry's key, or None for a text the cache does not hold (too long)."""
        if len(text) > MAX_CACHED_CHARS:
            return None
        normalised = text
        if self._normalizer is not None and not any(s in text for s in self._specials):
            normalised = self._normalizer.normalize_str(text)
        return (normalised, refuse_truncation, self.max_length)

    def get(self, key: tuple[str, bool, int] | None) -> CachedResult | None:
        if key is None:
            return None
        found = self._entries.get(key)
        if found is None:
            self._metrics.cache_lookups.labels(result="miss").inc()
            return None
        self._entries.move_to_end(key)
        self._metrics.cache_lookups.labels(result="hit").inc()
        return found

    def put(
        self,
        key: tuple[str, bool, int] | None,
        probabilities: np.ndarray,
        num_tokens: int,
        truncated: bool,
        model_version: str = "",
    ) -> None:
        if key is None:
            return
        row = np.array(probabilities, dtype=np.float32, copy=True)
        row.setflags(write=False)  # shared by every later hit: nobody may change it
        self._entries[key] = CachedResult(row, num_tokens, truncated, model_version)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._metrics.cache_evictions.inc()
        self._metrics.cache_entries.set(len(self._entries))


def _normalizer_of(tokenizer: Any) -> tuple[Any, tuple[str, ...]]:
    """(the Rust normalizer or None, the spellings of the added/special tokens) of a serving or transformers
    tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None, ()
    try:
        added = backend.get_added_tokens_decoder()
        specials = tuple(t.content for t in added.values() if t.content)
    except AttributeError:  # an old tokenizers release: keep every text raw rather than risk a wrong entry
        return None, ()
    return backend.normalizer, specials
