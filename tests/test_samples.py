"""The built-in Korean sample set: shape, labels, variety of registers."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from gamjeong.labels import LABEL_NAMES, NUM_LABELS
from gamjeong.samples import load_samples, sample_texts, samples_path


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    return load_samples()


def test_csv_header_and_english_labels() -> None:
    raw = pd.read_csv(samples_path(), encoding="utf-8")
    assert list(raw.columns) == ["text", "label"]
    assert set(raw["label"]) == set(LABEL_NAMES)


def test_columns_and_types(samples: pd.DataFrame) -> None:
    assert list(samples.columns) == ["text", "label"]
    assert all(isinstance(t, str) and t.strip() == t and t for t in samples["text"])
    assert all(isinstance(label, int) for label in samples["label"].tolist())
    assert set(samples["label"]) == set(range(NUM_LABELS))


def test_at_least_sixty_per_class(samples: pd.DataFrame) -> None:
    counts = samples["label"].value_counts()
    assert counts.min() >= 60, counts.to_dict()


def test_no_duplicates(samples: pd.DataFrame) -> None:
    assert not samples["text"].duplicated().any()
    normalised = samples["text"].str.replace(r"\s+", "", regex=True)
    assert not normalised.duplicated().any()


def test_no_near_duplicates(samples: pd.DataFrame) -> None:
    """No two sentences share most of their character pairs: a reworded copy would leak into the held-out share."""
    import itertools

    def pairs(text: str) -> frozenset[str]:
        text = re.sub(r"[\s.!?~,…ㅋㅎㅠㅜ]+", "", text)
        return frozenset(text[i : i + 2] for i in range(len(text) - 1))

    bigrams = [pairs(text) for text in samples["text"]]
    close = [
        (samples["text"][i], samples["text"][j])
        for i, j in itertools.combinations(range(len(bigrams)), 2)
        if len(bigrams[i] & bigrams[j]) >= 0.6 * len(bigrams[i] | bigrams[j])
    ]
    assert not close, close[:5]


def test_varied_registers(samples: pd.DataFrame) -> None:
    texts = samples["text"]
    hangul = texts.str.contains(r"[가-힣]", regex=True)
    assert hangul.all(), texts[~hangul].tolist()
    assert texts.str.contains("ㅋ").sum() >= 20
    assert texts.str.contains("ㅠ").sum() >= 20
    assert texts.str.contains(r"[A-Za-z]{2,}", regex=True).sum() >= 30
    polite = texts.str.contains(r"(?:니다|세요|요)[.!?]?$", regex=True)
    assert polite.sum() >= 70
    # Latin letters and ㅋ/ㅠ are spread over the classes, not confined to one.
    for pattern in (r"[A-Za-z]{2,}", "ㅋ|ㅠ"):
        with_pattern = samples.loc[texts.str.contains(pattern, regex=True), "label"]
        assert with_pattern.nunique() >= 5, pattern


def test_sample_texts_cover_every_class_and_are_reproducible(samples: pd.DataFrame) -> None:
    first = sample_texts(NUM_LABELS)
    label_of = dict(zip(samples["text"], samples["label"], strict=True))
    assert sorted(label_of[t] for t in first) == list(range(NUM_LABELS))
    assert sample_texts(20, seed=3) == sample_texts(20, seed=3)
    assert sample_texts(20, seed=3) != sample_texts(20, seed=4)
    assert sorted(sample_texts()) == sorted(samples["text"])
    assert sample_texts(0) == []
    with pytest.raises(ValueError):
        sample_texts(-1)


def test_load_samples_returns_a_copy() -> None:
    frame = load_samples()
    frame.loc[0, "text"] = "changed"
    assert load_samples().loc[0, "text"] != "changed"


def test_no_stray_whitespace_or_quotes_in_file() -> None:
    content = samples_path().read_text(encoding="utf-8")
    assert not re.search(r"[ \t]+\n", content)
    assert content.endswith("\n")
