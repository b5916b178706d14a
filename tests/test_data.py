"""Data loading: every format and encoding, the two real layouts, cleaning, splitting and each bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import korean_rows
from typer.testing import CliRunner

from gamjeong.cli import app
from gamjeong.errors import GamjeongError
from gamjeong.labels import LABEL2ID
from gamjeong.training.data import (
    download_goemotions_korean,
    load_labelled_data,
    load_splits,
    read_labelled_file,
    read_labelled_file_with_report,
    stratified_split,
)

ROWS = korean_rows()  # (text, English label), 4 per class
EXPECTED_IDS = [LABEL2ID[label] for _, label in ROWS]


def _csv_text(rows: list[tuple[str, str]], header: str = "text,label", sep: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=sep, lineterminator="\n")
    writer.writerow(header.split(sep))
    writer.writerows(rows)
    return buffer.getvalue()


def _assert_rows(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == [text for text, _ in ROWS]
    assert frame["label"].tolist() == EXPECTED_IDS


@pytest.mark.parametrize(
    ("name", "encoding", "bom"),
    [("utf8.csv", "utf-8", b""), ("bom.csv", "utf-8", b"\xef\xbb\xbf"), ("korean-excel.csv", "cp949", b"")],
)
def test_csv_encodings_are_detected(tmp_path: Path, name: str, encoding: str, bom: bytes) -> None:
    rows = ROWS
    path = tmp_path / name
    path.write_bytes(bom + _csv_text(rows).encode(encoding))
    frame, report = read_labelled_file_with_report(path)
    assert frame["text"].tolist() == [text for text, _ in rows]
    assert frame["label"].tolist() == EXPECTED_IDS
    assert report.encoding == {"utf8.csv": "utf-8", "bom.csv": "utf-8-sig", "korean-excel.csv": "cp949"}[name]
    # The BOM must not leak into the first column name, or the text column would not be found.
    assert report.text_column == "text"


def test_euc_kr_chosen_with_flag(tmp_path: Path) -> None:
    path = tmp_path / "euc.csv"
    path.write_bytes(_csv_text([("오늘 정말 행복해요", "기쁨"), ("너무 슬퍼요", "슬픔")]).encode("euc-kr"))
    frame = read_labelled_file(path, encoding="euc-kr")
    assert frame["text"].tolist() == ["오늘 정말 행복해요", "너무 슬퍼요"]
    assert frame["label"].tolist() == [0, 1]


def test_tsv_jsonl_and_column_flags(tmp_path: Path) -> None:
    tsv = tmp_path / "data.tsv"
    tsv.write_text(_csv_text(ROWS, header="document\temotion", sep="\t"), encoding="utf-8")
    _assert_rows(read_labelled_file(tsv))

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"id": i, "내용": t, "감정": lab}, ensure_ascii=False) for i, (t, lab) in enumerate(ROWS)),
        encoding="utf-8",
    )
    _assert_rows(read_labelled_file(jsonl, text_column="내용", label_column="감정"))


def test_aihub_xlsx_layout(tmp_path: Path) -> None:
    # The AI Hub 단발성 대화 sheet: Sentence, Emotion (joy is 행복) and extra unnamed columns.
    korean_names = {"joy": "행복", "sadness": "슬픔", "anger": "분노", "fear": "공포"}
    korean_names |= {"surprise": "놀람", "disgust": "혐오", "neutral": "중립"}
    rows = [{"Sentence": t, "Emotion": korean_names[lab], "Unnamed: 2": None, "연령": 20} for t, lab in ROWS]
    path = tmp_path / "한국어_단발성_대화_데이터셋.xlsx"
    pd.DataFrame(rows).to_excel(path, index=False)
    frame, report = read_labelled_file_with_report(path)
    _assert_rows(frame)
    assert (report.text_column, report.label_column, report.encoding) == ("Sentence", "Emotion", None)


def test_goemotions_tsv_is_mapped_to_ekman(tmp_path: Path) -> None:
    # Ids: 0 admiration, 2 anger, 3 annoyance, 9 disappointment, 14 fear, 17 joy, 26 surprise, 27 neutral.
    path = tmp_path / "train.tsv"
    path.write_text(
        '정말 멋지네요!\t0\teebbqej\n"짜증나" 진짜\t2,3\teec\n실망이야\t9\tx\n무서워\t14\ty\n'
        "놀랍다 기쁘다\t17,26\tz\n그냥 그래\t27\tw\n화나고 실망\t3,9\tv\n",
        encoding="utf-8",
    )
    frame, report = read_labelled_file_with_report(path)
    assert report.layout == "goemotions-tsv"
    assert report.dropped_multi_class == 2  # joy+surprise and anger+sadness
    assert frame["text"].tolist() == ["정말 멋지네요!", '"짜증나" 진짜', "실망이야", "무서워", "그냥 그래"]
    assert frame["label"].tolist() == [LABEL2ID[n] for n in ("joy", "anger", "sadness", "fear", "neutral")]


def test_cleaning_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "dirty.csv"
    path.write_text(
        "text,label\n  오늘 정말 행복해요  ,joy\n오늘 정말 행복해요,기쁨\n   ,joy\n,sadness\n"
        "애매한 문장,joy\n애매한 문장,anger\n버스는 10분마다 옵니다,neutral\n",
        encoding="utf-8",
    )
    frame, report = load_labelled_data(path)
    assert frame["text"].tolist() == ["오늘 정말 행복해요", "버스는 10분마다 옵니다"]
    assert (report.rows_read, report.dropped_empty, report.dropped_duplicates) == (7, 2, 1)
    assert (report.dropped_conflicting, report.conflicting_texts, report.rows_kept) == (2, 1, 2)
    assert report.dropped_total == 5


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    frame = pd.DataFrame({"text": [f"문장 {i}" for i in range(140)], "label": [i % 7 for i in range(140)]})
    rest, (validation, test) = stratified_split(frame, (0.1, 0.1), seed=3)
    assert len(rest) + len(validation) + len(test) == 140
    assert validation["label"].value_counts().to_dict() == dict.fromkeys(range(7), 2)
    assert set(rest["text"]).isdisjoint(validation["text"]) and set(validation["text"]).isdisjoint(test["text"])
    again = stratified_split(frame, (0.1, 0.1), seed=3)[1][0]
    assert again["text"].tolist() == validation["text"].tolist()
    other = stratified_split(frame, (0.1, 0.1), seed=4)[1][0]
    assert other["text"].tolist() != validation["text"].tolist()
    # A class with one row stays in training.
    tiny = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 0, 1]})
    rest, (validation,) = stratified_split(tiny, (0.5,), seed=0)
    assert 1 in rest["label"].tolist()


def test_directory_of_splits_and_generated_splits(tmp_path: Path, shared_data_dir: Path) -> None:
    splits = load_splits(shared_data_dir)
    assert splits.test is not None
    assert {name: report.path for name, report in splits.files.items()} == {
        "train": str(shared_data_dir / "train.csv"),
        "validation": str(shared_data_dir / "dev.csv"),
        "test": str(shared_data_dir / "test.csv"),
    }
    assert splits.files["validation"].rows_read == 4946

    path = tmp_path / "all.csv"
    rows = [(f"{text} {copy}", label) for copy in range(3) for text, label in ROWS]  # 12 per class
    path.write_text(_csv_text(rows), encoding="utf-8")
    made = load_splits(path, seed=1)
    assert made.test is not None
    assert len(made.train) + len(made.validation) + len(made.test) == len(rows)
    assert made.validation["label"].value_counts().to_dict() == dict.fromkeys(range(7), 1)
    assert "stratified, seed 1" in made.split_note


# --- bad input ---------------------------------------------------------------------------------------------------
def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(GamjeongError) as info:
        read_labelled_file(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_labels_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\n좋아요,joy\n지루해,bored\n몰라,행복함\n", encoding="utf-8")
    message = _error(path)
    assert "'bored'" in message and "'행복함'" in message and "joy" in message and "기쁨" in message


def test_missing_column_names_those_found(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("문장,감정\n좋아요,joy\n", encoding="utf-8")
    message = _error(path)
    assert "no text column" in message and "'문장', '감정'" in message and "--text-column" in message
    assert "no column 'review'" in _error(path, text_column="review")


def test_empty_unreadable_and_wrong_encoding(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert "is empty" in _error(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    assert "no data rows" in _error(header_only)
    assert "does not exist" in _error(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\x01\x02text\x00label\n")
    assert "binary" in _error(binary)
    not_excel = tmp_path / "fake.xlsx"
    not_excel.write_text("text,label\n", encoding="utf-8")
    assert "Excel" in _error(not_excel)
    wrong_type = tmp_path / "notes.txt"
    wrong_type.write_text("hello", encoding="utf-8")
    assert "unsupported extension" in _error(wrong_type)

    cp949 = tmp_path / "cp949.csv"
    cp949.write_bytes(_csv_text([("오늘 정말 행복해요", "기쁨")]).encode("cp949"))
    message = _error(cp949, encoding="utf-8")
    assert "not valid utf-8" in message and "--encoding" in message
    assert "Unknown encoding" in _error(cp949, encoding="klingon")


def test_missing_label_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nolabel.csv"
    path.write_text("text,label\n좋아요,joy\n슬퍼요,\n", encoding="utf-8")
    assert "no label" in _error(path)


def test_download_offline_is_one_sentence(tmp_path: Path) -> None:
    # Port 9 (discard) on localhost refuses the connection at once, like a machine without network.
    with pytest.raises(GamjeongError) as info:
        download_goemotions_korean(tmp_path, base_url="http://127.0.0.1:9/data")
    message = str(info.value)
    assert "Could not download GoEmotions-Korean" in message and "--data" in message
    assert not list((tmp_path / "goemotions-korean").iterdir())  # no partial files left behind


# --- CLI ---------------------------------------------------------------------------------------------------------
def test_data_inspect_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import huggingface_hub

    path = tmp_path / "data.csv"
    path.write_text(_csv_text([*ROWS, ROWS[0], ("애매한 문장", "joy"), ("애매한 문장", "anger")]), encoding="utf-8")
    # The default base model's tokenizer is not in the Hugging Face cache: whitespace words, with a note.
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "joy 기쁨" in result.output and "exact duplicates" in result.output
    assert "whitespace words" in result.output and "--tokenizer" in result.output
    result = CliRunner().invoke(app, ["data", "inspect", str(path), "--tokenizer", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "whitespace words" not in result.output and "tokens counted with" in result.output


def test_inspect_counts(tmp_path: Path) -> None:
    from gamjeong.training.inspection import InspectConfig, inspect_file

    path = tmp_path / "data.csv"
    path.write_text(_csv_text([*ROWS, ROWS[0], ("애매한 문장", "joy"), ("애매한 문장", "anger")]), encoding="utf-8")
    result = inspect_file(InspectConfig(path=path, max_length=3), tokenizer=None, token_unit="whitespace words")
    assert result.rows_per_class == dict.fromkeys(result.rows_per_class, 4)
    assert (result.report.dropped_duplicates, result.report.conflicting_texts) == (1, 1)
    assert result.chars.max == max(len(t) for t, _ in ROWS)
    assert result.tokens.over_max_length == sum(len(t.split()) > 3 for t, _ in [*ROWS, ROWS[0]])


def test_goemotions_folder_works_as_training_data(tmp_path: Path) -> None:
    # The layout download_goemotions_korean() produces: train.tsv, dev.tsv, test.tsv without headers.
    for name, rows in {
        "train": ["좋아요\t17", "싫어요\t2", "그냥\t27", "둘 다\t2,17"] * 3,
        "dev": ["최고\t15", "무서워\t19"],
        "test": ["깜짝이야\t26"],
    }.items():
        (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    splits = load_splits(tmp_path)
    assert splits.files["train"].dropped_multi_class == 3
    assert splits.files["train"].dropped_duplicates == 6
    assert splits.train["label"].tolist() == [LABEL2ID["joy"], LABEL2ID["anger"], LABEL2ID["neutral"]]
    assert splits.validation["label"].tolist() == [LABEL2ID["joy"], LABEL2ID["fear"]]
    assert splits.test is not None and splits.test["label"].tolist() == [LABEL2ID["surprise"]]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("text,label\n좋아요,bored\n".encode(), [], "'bored'"),
        ("문장,감정\n좋아요,joy\n".encode(), [], "no text column"),
        (b"", [], "is empty"),
        ("text,label\n좋아요,기쁨\n".encode("cp949"), ["--encoding", "utf-8"], "not valid utf-8"),
    ],
)
def test_cli_bad_input_is_exit_2_and_one_line(tmp_path: Path, content: bytes, options: list[str], message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["data", "inspect", str(path), *options])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
