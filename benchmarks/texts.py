"""Real Korean texts for the benchmarks, and inputs of an exact token length built from them.

Inputs are built from real sentences (not random token ids) so that tokenisation is measured on the kind of text the
server sees: sentences are joined until they are longer than the target, then the predictor truncates them at exactly
`seq_len` tokens ([CLS] and [SEP] included).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from gamjeong.errors import GamjeongError

REPO_ROOT = Path(__file__).resolve().parents[1]
# Sessions and CI lay the shared data beside the checkout; GAMJEONG_SHARED overrides (as in tests/conftest.py).
SHARED_DIR = Path(os.environ.get("GAMJEONG_SHARED", REPO_ROOT.parent / "shared"))
MBERT_TOKENIZER_DIR = SHARED_DIR / "models" / "distilbert-base-multilingual-cased-tokenizer"


@dataclass(frozen=True)
class TextSource:
    texts: list[str]
    description: str  # where the texts came from, recorded with the results


def load_texts(data_file: Path | None = None, *, limit: int = 5000) -> TextSource:
    """Korean texts from the data file given, else the shipped GoEmotions-Korean subset (real comments).

    The default is real text on purpose: real short texts are heavy-tailed (mean 17 tokens, p95 33, max 64 with the
    e5 tokenizer), and padding in a batch costs what it costs only on such a mix; the built-in samples are short and
    uniform and hid it. Both are shuffled with a fixed seed before `limit` is applied, so a file sorted by label or
    length still gives a representative mix.
    """
    if data_file is not None:
        texts, description = _read_text_column(data_file), f"data file {Path(data_file).name}"
    else:
        from gamjeong.goemotions_subset import ORIGIN, load_goemotions_subset

        texts = load_goemotions_subset()["text"].astype(str).tolist()
        description = f"shipped GoEmotions-Korean subset ({ORIGIN})"
    random.Random(0).shuffle(texts)
    return TextSource(texts[:limit], description)


def _read_text_column(path: Path) -> list[str]:
    """The texts of a labelled data file (any layout `gamjeong train` reads: CSV, TSV, JSONL, XLSX...)."""
    from gamjeong.datafiles import read_labelled_file

    return read_labelled_file(path)["text"].astype(str).tolist()


def texts_of_length(tokenizer, sentences: list[str], seq_len: int, count: int, *, seed: int = 0) -> list[str]:
    """`count` texts of at least `seq_len` tokens each, made by joining randomly picked real sentences.

    Each text is cut a few tokens past `seq_len` (at a token boundary, by the tokenizer's offsets) so that texts are
    not needlessly long; the predictor then truncates at exactly `seq_len`.
    """
    if not sentences:
        raise GamjeongError("No texts to build benchmark inputs from; pass --data with a CSV that has a 'text' column.")
    rng = random.Random(seed * 1_000_003 + seq_len)
    margin = 4  # tokens past seq_len, so that a cut inside a word cannot leave the text one token short
    texts: list[str] = []
    for _ in range(count):
        text = rng.choice(sentences)
        while len(tokenizer(text, add_special_tokens=True)["input_ids"]) < seq_len + margin:
            text = f"{text} {rng.choice(sentences)}"
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        keep = seq_len + margin - 2  # room for [CLS] and [SEP]
        end = enc["offset_mapping"][min(keep, len(enc["offset_mapping"])) - 1][1]
        texts.append(text[:end])
    return texts
