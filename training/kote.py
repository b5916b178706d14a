"""Build gamjeong/resources/kote-7class.csv.gz from KOTE's val.tsv and test.tsv (the rule in resources/KOTE.md).

KOTE (Korean Online That-gul Emotions, github.com/searle-j/KOTE, MIT) labels 50,000 online comments with the union of
five annotators' choices among 44 emotions: about eight labels per comment, so most comments carry labels of several
of our classes at once. A naive majority over the mappable labels gave 64% joy and almost no fear, disgust or neutral,
and that mix hurt native quality. So the rule keeps only comments whose labels point clearly one way:

- each of the 44 labels maps to one class or to none (`KOTE_TO_CLASS`; ambiguous ones such as 어이없음, 의심/불신 or
  깨달음 map to none);
- a comment's class is the one with the most mapped labels; it is kept when that class holds at least
  `MIN_SHARE` of its mapped labels, at least two of them, and one is a core label of the class (`CORE`), so a comment
  is never joy only because annotators also ticked 기대감 and 아껴주는;
- fear has few labels, so one core fear label that wins outright is enough; neutral is 없음 with at most one other label.

Every kept comment is written (class balance is a training recipe, applied when the data is used: see
gamjeong/quickstart/data.py), with its KOTE id and the file it came from: `val` rows may be trained on, `test` rows are
the held-out native yardstick and are never trained on.

    python -m gamjeong.training.kote path/to/val.tsv path/to/test.tsv -o gamjeong/resources/kote-7class.csv.gz
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import pandas as pd

from gamjeong.labels import LABEL2ID

# KOTE's 44 labels, in the order of its label ids (README of searle-j/KOTE).
KOTE_LABELS: tuple[str, ...] = (
    "불평/불만", "환영/호의", "감동/감탄", "지긋지긋", "고마움", "슬픔", "화남/분노", "존경", "기대감", "우쭐댐/무시함",
    "안타까움/실망", "비장함", "의심/불신", "뿌듯함", "편안/쾌적", "신기함/관심", "아껴주는", "부끄러움", "공포/무서움",
    "절망", "한심함", "역겨움/징그러움", "짜증", "어이없음", "없음", "패배/자기혐오", "귀찮음", "힘듦/지침",
    "즐거움/신남", "깨달음", "죄책감", "증오/혐오", "흐뭇함(귀여움/예쁨)", "당황/난처", "경악", "부담/안_내킴", "서러움",
    "재미없음", "불쌍함/연민", "놀람", "행복", "불안/걱정", "기쁨", "안심/신뢰",
)  # fmt: skip

# Which class each KOTE label counts for; labels not listed count for none.
KOTE_TO_CLASS: dict[str, str] = {
    **dict.fromkeys(
        (
            "환영/호의",
            "감동/감탄",
            "고마움",
            "존경",
            "기대감",
            "뿌듯함",
            "편안/쾌적",
            "아껴주는",
            "즐거움/신남",
            "흐뭇함(귀여움/예쁨)",
            "행복",
            "기쁨",
            "안심/신뢰",
        ),
        "joy",
    ),
    **dict.fromkeys(
        ("슬픔", "안타까움/실망", "절망", "패배/자기혐오", "힘듦/지침", "서러움", "불쌍함/연민"), "sadness"
    ),
    **dict.fromkeys(("불평/불만", "화남/분노", "짜증", "지긋지긋"), "anger"),
    **dict.fromkeys(("공포/무서움", "불안/걱정"), "fear"),
    **dict.fromkeys(("놀람", "경악", "신기함/관심", "당황/난처"), "surprise"),
    **dict.fromkeys(("역겨움/징그러움", "증오/혐오", "한심함", "우쭐댐/무시함"), "disgust"),
    "없음": "neutral",
}
# A kept comment carries at least one of its class's core labels.
CORE: dict[str, frozenset[str]] = {
    "joy": frozenset(("즐거움/신남", "흐뭇함(귀여움/예쁨)", "행복", "기쁨", "뿌듯함")),
    "sadness": frozenset(("슬픔", "절망", "서러움", "힘듦/지침", "패배/자기혐오")),
    "anger": frozenset(("화남/분노", "짜증")),
    "fear": frozenset(("공포/무서움", "불안/걱정")),
    "surprise": frozenset(("놀람", "경악")),
    "disgust": frozenset(("역겨움/징그러움", "증오/혐오")),
    "neutral": frozenset(("없음",)),
}
MIN_SHARE = 0.5
MAX_CHARS = 200  # longer comments are mostly pasted articles; the model reads 64 tokens anyway


def map_labels(label_ids: list[int]) -> str | None:
    """The class of one comment from its KOTE label ids, or None when its labels do not point clearly one way."""
    names = [KOTE_LABELS[i] for i in label_ids]
    votes = Counter(KOTE_TO_CLASS[name] for name in names if name in KOTE_TO_CLASS)
    if not votes:
        return None
    (best, count), *rest = votes.most_common()
    if rest and rest[0][1] == count:
        return None  # a tie points two ways
    if best == "neutral":
        return best if len(names) <= 2 else None
    if not CORE[best] & set(names):
        return None
    if best == "fear":
        return best
    return best if count >= 2 and count / sum(votes.values()) >= MIN_SHARE else None


def read_kote_tsv(path: Path) -> pd.DataFrame:
    """A KOTE split file: tab-separated id, text, comma-separated label ids; no header."""
    return pd.read_csv(
        path, sep="\t", header=None, names=["kote_id", "text", "labels"], dtype=str, quoting=csv.QUOTE_MINIMAL
    )


def build(val_tsv: Path, test_tsv: Path) -> pd.DataFrame:
    """The kept comments of both files: columns text, label (English name), split (val | test), kote_id."""
    parts = []
    for split, path in (("val", val_tsv), ("test", test_tsv)):
        frame = read_kote_tsv(path)
        frame["text"] = frame["text"].fillna("").str.split().str.join(" ")
        frame["label"] = [map_labels([int(i) for i in str(ids).split(",")]) for ids in frame["labels"]]
        frame = frame[frame["label"].notna() & frame["text"].str.len().between(2, MAX_CHARS)]
        parts.append(frame.assign(split=split)[["text", "label", "split", "kote_id"]])
    both = pd.concat(parts, ignore_index=True)
    # A text in both files (or twice with different classes) is dropped everywhere: held-out texts stay unseen.
    return both[~both["text"].duplicated(keep=False)].reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_tsv", type=Path)
    parser.add_argument("test_tsv", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    frame = build(args.val_tsv, args.test_tsv)
    assert set(frame["label"]) <= set(LABEL2ID)
    frame.to_csv(args.output, index=False, encoding="utf-8", compression={"method": "gzip", "mtime": 0})
    print(frame.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    main()
