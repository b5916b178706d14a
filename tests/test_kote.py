"""KOTE mapped to the seven emotions: the rule (training/kote.py) and the shipped file (gamjeong/kote.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gamjeong.kote import kote_path, load_kote
from gamjeong.labels import LABEL_NAMES, NUM_LABELS
from gamjeong.training.kote import CORE, KOTE_LABELS, KOTE_TO_CLASS, build, map_labels


def ids(*names: str) -> list[int]:
    return [KOTE_LABELS.index(name) for name in names]


def test_the_label_table_is_consistent() -> None:
    assert len(KOTE_LABELS) == len(set(KOTE_LABELS)) == 44
    assert set(KOTE_TO_CLASS) <= set(KOTE_LABELS)
    assert set(KOTE_TO_CLASS.values()) == set(CORE) == set(LABEL_NAMES)
    for emotion, core in CORE.items():
        assert all(KOTE_TO_CLASS[name] == emotion for name in core), emotion


def test_a_comment_is_kept_only_when_its_labels_point_one_way() -> None:
    assert map_labels(ids("기쁨", "행복", "즐거움/신남", "화남/분노")) == "joy"
    assert map_labels(ids("화남/분노", "짜증", "불평/불만", "기쁨")) == "anger"
    assert map_labels(ids("기대감", "아껴주는")) is None  # joy by count, but no core joy label
    assert map_labels(ids("기쁨", "행복", "슬픔", "절망")) is None  # a tie
    assert map_labels(ids("기쁨", "슬픔", "화남/분노", "경악")) is None  # one label each: no share of half, no pair
    assert map_labels(ids("어이없음", "의심/불신")) is None  # labels that count for no class
    assert map_labels(ids("공포/무서움", "어이없음")) == "fear"  # one core fear label is enough
    assert map_labels(ids("없음")) == map_labels(ids("없음", "깨달음")) == "neutral"
    assert map_labels(ids("없음", "깨달음", "비장함")) is None  # neutral is 없음 with at most one other label


def test_build_keeps_mapped_comments_and_drops_texts_found_in_both_files(tmp_path: Path) -> None:
    def tsv(name: str, rows: list[tuple[str, str, list[int]]]) -> Path:
        path = tmp_path / name
        path.write_text("".join(f"{i}\t{t}\t{','.join(map(str, ls))}\n" for i, t, ls in rows), encoding="utf-8")
        return path

    joy, anger = ids("기쁨", "행복"), ids("화남/분노", "짜증")
    val = tsv("val.tsv", [("1", "너무  좋다", joy), ("2", "둘 다 있음", anger), ("3", "애매", ids("의심/불신"))])
    test = tsv("test.tsv", [("4", "둘 다 있음", anger), ("5", "열받네", anger)])
    built = build(val, test)
    assert built.to_dict("records") == [
        {"text": "너무 좋다", "label": "joy", "split": "val", "kote_id": "1"},
        {"text": "열받네", "label": "anger", "split": "test", "kote_id": "5"},
    ]


def test_the_shipped_file_keeps_its_held_out_part_apart() -> None:
    raw = pd.read_csv(kote_path(), dtype=str, keep_default_na=False)
    assert list(raw.columns) == ["text", "label", "split", "kote_id"]
    assert set(raw["split"]) == {"val", "test"} and set(raw["label"]) == set(LABEL_NAMES)
    assert not raw["text"].duplicated().any() and not raw["kote_id"].duplicated().any()
    trainable, held_out = load_kote("val"), load_kote("test")
    assert len(trainable) + len(held_out) == len(raw)
    assert not set(trainable["text"]) & set(held_out["text"])
    assert set(held_out["label"]) == set(range(NUM_LABELS))
