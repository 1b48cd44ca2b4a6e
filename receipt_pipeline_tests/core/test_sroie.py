"""read_sroie on small receipts written per test, on S3, and on the whole shared training split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from receipt_pipeline.core import aws
from receipt_pipeline.core.sroie import ENTITY_FIELDS, read_sroie
from receipt_pipeline.core.word_table import COLUMNS


def box_line(x0: int, y0: int, x1: int, y1: int, text: str) -> str:
    """A SROIE box line: four corners clockwise from the top left, then the text."""
    return f"{x0},{y0},{x1},{y0},{x1},{y1},{x0},{y1},{text}"


COMPANY = box_line(100, 20, 400, 50, "KEDAI BUKU ABC SDN BHD")
ADDRESS = [
    box_line(90, 60, 420, 80, "NO. 12, JALAN MAWAR 3,"),
    box_line(110, 85, 400, 105, "TAMAN BUNGA, 81100 JOHOR BAHRU,"),
    box_line(200, 110, 300, 130, "JOHOR."),
]
DATE = [box_line(20, 150, 80, 170, "DATE:"), box_line(150, 150, 260, 170, "25/12/2018 8:13:39 PM")]
ITEMS = [
    box_line(20, 190, 200, 210, "PEN BLUE"),
    box_line(350, 190, 420, 210, "9.00"),
    box_line(20, 220, 150, 240, "SUBTOTAL"),
    box_line(350, 220, 420, 240, "9.00"),
    box_line(20, 250, 150, 270, "TOTAL"),
    box_line(350, 250, 420, 270, "9.00"),
    box_line(20, 280, 150, 300, "CASH"),
    box_line(350, 280, 420, 300, "9.00"),
]
RECEIPT = [COMPANY, *ADDRESS, *DATE, *ITEMS]
ENTITIES = {
    "company": "KEDAI BUKU ABC SDN BHD",
    "date": "25-12-2018",  # the receipt prints 25/12/2018
    "address": "NO. 12, JALAN MAWAR 3, TAMAN BUNGA, 81100 JOHOR BAHRU, JOHOR.",
    "total": "RM 9.00",
}


def write_receipt(
    root: Path,
    image_id: str,
    lines: list[str],
    entities: dict | str | None = ENTITIES,
    *,
    split: str = "train",
    entity_folder: str = "entities",
) -> Path:
    box_path = root / split / "box" / f"{image_id}.txt"
    box_path.parent.mkdir(parents=True, exist_ok=True)
    box_path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    if entities is not None:
        entity_path = root / split / entity_folder / f"{image_id}.txt"
        entity_path.parent.mkdir(parents=True, exist_ok=True)
        entity_path.write_text(entities if isinstance(entities, str) else json.dumps(entities, indent=4))
    return box_path


def words_of(frame: pd.DataFrame, image_id: str) -> pd.DataFrame:
    """One receipt's words in reading order."""
    rows = frame[frame["image_id"] == image_id]
    return rows.sort_values(["line_id", "word_id"]).reset_index(drop=True)


def tagged_text(frame: pd.DataFrame, image_id: str, label: str) -> str:
    words = words_of(frame, image_id)
    return " ".join(words.loc[words["label"] == label, "text"])


def problem_kinds(result, path: Path | str) -> set[str]:
    return {problem.kind for problem in result.problems if problem.path.startswith(str(path))}


def test_fixture_receipt_is_read_and_every_entity_tagged(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)

    result = read_sroie(str(tmp_path))

    assert result.receipts == {"train": 1}
    assert result.problems == []
    assert result.coverage == {name: 1.0 for name in ENTITY_FIELDS}
    frame = result.frame
    assert list(frame.columns) == COLUMNS
    assert set(frame["source"]) == {"sroie"} and set(frame["source_split"]) == {"train"}
    assert set(frame["receipt_id"]) == {1}
    assert frame["confidence"].isna().all()
    assert tagged_text(frame, "R1", "COMPANY") == "KEDAI BUKU ABC SDN BHD"
    assert tagged_text(frame, "R1", "DATE") == "25/12/2018"
    for labels, label in zip(frame["labels"], frame["label"], strict=True):
        assert list(labels) == ([] if pd.isna(label) else [label])


def test_commas_inside_the_text_and_a_trailing_comma_stay_text(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    first_address_line = words[words["line_id"] == 2]
    assert list(first_address_line["text"]) == ["NO.", "12,", "JALAN", "MAWAR", "3,"]
    # the coordinates are the first eight fields, not shifted by the commas in the text
    widest = 420
    assert first_address_line["x0"].iloc[0] == pytest.approx(90 / widest)
    assert first_address_line["x1"].iloc[-1] == pytest.approx(420 / widest)


def test_crlf_and_lf_line_endings_mixed_in_one_file(tmp_path):
    box_path = write_receipt(tmp_path, "R1", RECEIPT)
    halves = ("\r\n".join(RECEIPT[:5]), "\n".join(RECEIPT[5:]))
    box_path.write_bytes((halves[0] + "\r\n" + halves[1] + "\n").encode())

    result = read_sroie(str(tmp_path))

    words = words_of(result.frame, "R1")
    assert words["line_id"].nunique() == len(RECEIPT)
    assert not words["text"].str.contains("\r").any()
    assert result.problems == []


def test_non_utf8_bytes_fall_back_and_are_reported(tmp_path):
    box_path = write_receipt(tmp_path, "R1", RECEIPT)
    box_path.write_bytes(box_path.read_bytes() + box_line(20, 320, 200, 340, "CAFÉ LATTE").encode("cp1252"))

    result = read_sroie(str(tmp_path))

    assert [problem.kind for problem in result.problems] == ["non_utf8"]
    assert result.problems[0].path == str(box_path)
    assert str(box_path) in str(result.problems[0])
    assert "CAFÉ" in set(words_of(result.frame, "R1")["text"])
    assert result.problem_counts == {"non_utf8": 1}


def test_replacement_characters_already_in_the_file_are_reported(tmp_path):
    box_path = write_receipt(tmp_path, "R1", [*RECEIPT, box_line(20, 320, 200, 340, "TEH \ufffd AIS")])

    result = read_sroie(str(tmp_path))

    assert [(p.path, p.kind) for p in result.problems] == [(str(box_path), "replacement_characters")]
    assert "\ufffd" in set(result.frame["text"])


def test_missing_address_is_reported_and_not_expected(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT, {k: v for k, v in ENTITIES.items() if k != "address"})

    result = read_sroie(str(tmp_path))

    assert problem_kinds(result, tmp_path / "train" / "entities" / "R1.txt") == {"missing_entity_field"}
    assert "address" in result.problems[0].detail
    assert result.entity_counts["address"] == (0, 0)
    assert "ADDRESS" not in set(result.frame["label"].dropna())
    assert result.entity_counts["company"] == (1, 1)


def test_empty_total_is_reported_and_not_expected(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT, {**ENTITIES, "total": ""})

    result = read_sroie(str(tmp_path))

    assert problem_kinds(result, tmp_path) == {"empty_entity_field"}
    assert result.entity_counts["total"] == (0, 0)
    assert "TOTAL" not in set(result.frame["label"].dropna())
    assert result.coverage["date"] == 1.0


def test_entities_in_a_key_folder(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT, entity_folder="key")

    result = read_sroie(str(tmp_path))

    assert result.problems == []
    assert set(result.frame["label"].dropna()) == {"COMPANY", "DATE", "ADDRESS", "TOTAL"}


def test_box_lines_out_of_order_come_out_in_reading_order(tmp_path):
    write_receipt(tmp_path, "ORDERED", RECEIPT)
    shuffled = RECEIPT[1::2] + RECEIPT[0::2][::-1]
    assert sorted(shuffled) == sorted(RECEIPT) and shuffled != RECEIPT
    write_receipt(tmp_path, "SHUFFLED", shuffled)

    frame = read_sroie(str(tmp_path)).frame

    ordered, reordered = words_of(frame, "ORDERED"), words_of(frame, "SHUFFLED")
    columns = ["line_id", "word_id", "text", "x0", "y0", "x1", "y1", "label"]
    pd.testing.assert_frame_equal(ordered[columns], reordered[columns])
    # a price printed on its label's row follows the label
    texts = list(ordered["text"])
    assert texts[texts.index("TOTAL") + 1] == "9.00"
    assert texts[:5] == ["KEDAI", "BUKU", "ABC", "SDN", "BHD"]


def test_rows_cluster_lines_whose_centres_are_close(tmp_path):
    # the price box sits a few pixels lower than its label; the next row starts left of both
    lines = [
        box_line(350, 104, 420, 124, "4.50"),
        box_line(20, 100, 150, 120, "COFFEE"),
        box_line(20, 130, 150, 150, "TEA"),
    ]
    write_receipt(tmp_path, "R1", lines, entities=None)

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    assert list(words["text"]) == ["COFFEE", "4.50", "TEA"]
    assert list(words["line_id"]) == [1, 2, 3]


def test_malformed_box_lines_are_counted_not_fatal(tmp_path):
    box_path = write_receipt(tmp_path, "R1", [*RECEIPT[:2], "12,40,300", "a,b,c,d,e,f,g,h,BROKEN", *RECEIPT[2:]])

    result = read_sroie(str(tmp_path))

    assert result.problem_counts == {"short_box_line": 1, "bad_coordinates": 1}
    by_kind = {problem.kind: problem for problem in result.problems}
    assert by_kind["short_box_line"].path == f"{box_path}:3"
    assert by_kind["bad_coordinates"].path == f"{box_path}:4"
    assert "BROKEN" not in set(result.frame["text"])
    assert words_of(result.frame, "R1")["line_id"].nunique() == len(RECEIPT)
    assert result.coverage["total"] == 1.0


def test_total_prefers_the_total_row_over_other_equal_amounts(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    assert (words["text"] == "9.00").sum() == 4  # item, subtotal, total, cash
    tagged = words.index[words["label"] == "TOTAL"]
    assert len(tagged) == 1
    assert words.loc[tagged[0] - 1, "text"] == "TOTAL"


def test_total_printed_below_its_label_beats_the_subtotal(tmp_path):
    lines = [
        box_line(20, 100, 150, 120, "SUB TOTAL"),
        box_line(350, 100, 420, 120, "12.50"),
        box_line(20, 130, 200, 150, "TOTAL AMOUNT PAYABLE"),
        box_line(350, 160, 420, 180, "12.50"),
        box_line(20, 200, 150, 220, "THANK YOU"),
    ]
    write_receipt(tmp_path, "R1", lines, {"company": "", "date": "", "address": "", "total": "12.5"})

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    tagged = words[words["label"] == "TOTAL"]
    assert list(tagged["text"]) == ["12.50"]
    assert tagged["line_id"].item() == words.loc[words["text"] == "PAYABLE", "line_id"].item() + 1


def test_multi_line_address_is_one_contiguous_run(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    address = words[words["label"] == "ADDRESS"]
    assert list(address["line_id"].unique()) == [2, 3, 4]
    assert address["line_id"].value_counts().sort_index().tolist() == [5, 5, 1]
    assert address.index.tolist() == list(range(address.index[0], address.index[-1] + 1))
    assert set(words.loc[words["line_id"].isin([2, 3, 4]), "label"]) == {"ADDRESS"}


def test_company_glued_to_its_registration_number_is_tagged_whole(tmp_path):
    lines = [box_line(50, 20, 500, 50, "BROADVIEW MARKETING SDN BHD(728384-M)"), *RECEIPT[1:]]
    write_receipt(tmp_path, "R1", lines, {**ENTITIES, "company": "BROADVIEW MARKETING SDN BHD"})

    frame = read_sroie(str(tmp_path)).frame

    assert tagged_text(frame, "R1", "COMPANY") == "BROADVIEW MARKETING SDN BHD(728384-M)"


def test_date_is_matched_only_as_a_whole_token(tmp_path):
    lines = [
        box_line(20, 20, 300, 40, "INV 111/03/18-7"),  # holds 11/03/18 inside a longer number
        box_line(20, 50, 300, 70, "TIME:21:30 ON:11.03.18"),
    ]
    write_receipt(tmp_path, "R1", lines, {**ENTITIES, "date": "11/03/18"})

    frame = read_sroie(str(tmp_path)).frame

    assert tagged_text(frame, "R1", "DATE") == "ON:11.03.18"


def test_entity_that_is_not_on_the_receipt_is_reported(tmp_path):
    entity_path = tmp_path / "train" / "entities" / "R1.txt"
    write_receipt(tmp_path, "R1", RECEIPT, {**ENTITIES, "company": "SOMETHING ELSE ENTIRELY LTD"})

    result = read_sroie(str(tmp_path))

    assert [(p.path, p.kind) for p in result.problems] == [(str(entity_path), "entity_not_found")]
    assert "company" in result.problems[0].detail
    assert result.entity_counts["company"] == (0, 1)
    assert result.coverage["company"] == 0.0
    assert "COMPANY" not in set(result.frame["label"].dropna())


def test_words_have_unit_boxes_in_reading_order(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)

    words = words_of(read_sroie(str(tmp_path)).frame, "R1")

    for column in ("x0", "y0", "x1", "y1"):
        assert words[column].between(0.0, 1.0).all()
    assert (words["x0"] <= words["x1"]).all() and (words["y0"] <= words["y1"]).all()
    # the extent is the furthest corner: something touches the right and the bottom edge
    assert words["x1"].max() == pytest.approx(1.0) and words["y1"].max() == pytest.approx(1.0)
    for _, line in words.groupby("line_id"):
        assert line["word_id"].tolist() == list(range(1, len(line) + 1))
        assert line["x0"].is_monotonic_increasing and line["x1"].is_monotonic_increasing
        assert line["y0"].nunique() == 1


def test_split_without_entities_is_read_untagged_and_reported(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)
    write_receipt(tmp_path, "T1", RECEIPT, entities=None, split="test")
    (tmp_path / "README.md").write_text("not a split")

    result = read_sroie(str(tmp_path))

    assert result.receipts == {"test": 1, "train": 1}
    assert [(p.path, p.kind) for p in result.problems] == [(str(tmp_path / "test"), "missing_entity_folder")]
    test_words = result.frame[result.frame["source_split"] == "test"]
    assert len(test_words) == len(words_of(result.frame, "R1"))
    assert test_words["label"].isna().all()
    assert read_sroie(str(tmp_path), splits=["train"]).receipts == {"train": 1}


def test_a_root_without_splits_is_an_error_and_a_missing_named_split_a_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SROIE split"):
        read_sroie(str(tmp_path / "nowhere"))
    write_receipt(tmp_path, "R1", RECEIPT)

    result = read_sroie(str(tmp_path), splits=["train", "validation"])

    assert result.receipts == {"train": 1, "validation": 0}
    assert [(p.path, p.kind) for p in result.problems] == [(str(tmp_path / "validation"), "missing_box_folder")]


def test_unmatched_and_unparsable_files_are_reported(tmp_path):
    write_receipt(tmp_path, "R1", RECEIPT)
    write_receipt(tmp_path, "NO_ENTITIES", RECEIPT)
    (tmp_path / "train" / "entities" / "NO_ENTITIES.txt").unlink()
    write_receipt(tmp_path, "BAD_JSON", RECEIPT, '{"company": "KEDAI BUKU ABC')
    (tmp_path / "train" / "entities" / "NO_BOX.txt").write_text(json.dumps(ENTITIES))

    result = read_sroie(str(tmp_path))

    entities = tmp_path / "train" / "entities"
    assert sorted((p.path, p.kind) for p in result.problems) == [
        (str(tmp_path / "train" / "box" / "NO_ENTITIES.txt"), "missing_entity_file"),
        (str(entities / "BAD_JSON.txt"), "unparsable_entities"),
        (str(entities / "NO_BOX.txt"), "missing_box_file"),
    ]
    assert result.receipts == {"train": 3}
    assert result.frame["image_id"].nunique() == 3
    assert result.entity_counts["company"] == (1, 1)


def test_reads_from_s3(artifacts_bucket, tmp_path):
    s3 = aws.client("s3")
    prefix = "datasets/sroie"
    box_bytes = "\r\n".join(RECEIPT).encode() + b"\n" + box_line(20, 320, 200, 340, "CAFÉ LATTE").encode("cp1252")
    s3.put_object(Bucket=artifacts_bucket, Key=f"{prefix}/train/box/R1.txt", Body=box_bytes)
    s3.put_object(Bucket=artifacts_bucket, Key=f"{prefix}/train/entities/R1.txt", Body=json.dumps(ENTITIES))
    s3.put_object(Bucket=artifacts_bucket, Key=f"{prefix}/test/box/T1.txt", Body="\n".join(RECEIPT).encode())
    write_receipt(tmp_path, "R1", RECEIPT).write_bytes(box_bytes)

    result = read_sroie(f"s3://{artifacts_bucket}/{prefix}/")

    assert result.receipts == {"test": 1, "train": 1}
    assert result.coverage == {name: 1.0 for name in ENTITY_FIELDS}
    root = f"s3://{artifacts_bucket}/{prefix}"
    assert sorted((p.path, p.kind) for p in result.problems) == [
        (f"{root}/test", "missing_entity_folder"),
        (f"{root}/train/box/R1.txt", "non_utf8"),
    ]
    local = words_of(read_sroie(str(tmp_path)).frame, "R1")
    remote = words_of(result.frame, "R1")
    pd.testing.assert_frame_equal(remote, local)
    assert remote["text"].iloc[-2:].tolist() == ["CAFÉ", "LATTE"]
    assert words_of(result.frame, "T1")["source_split"].unique().tolist() == ["test"]


@pytest.mark.slow
def test_whole_shared_training_split(shared_sroie_dir):
    result = read_sroie(str(shared_sroie_dir), splits=["train"])

    box_files = list((shared_sroie_dir / "train" / "box").glob("*.txt"))
    assert result.receipts == {"train": len(box_files)}
    frame = result.frame
    assert frame["image_id"].nunique() == len(box_files)
    assert result.coverage["company"] >= 0.97
    assert result.coverage["date"] >= 0.97
    assert result.coverage["total"] >= 0.97
    assert result.coverage["address"] >= 0.95
    # the README's known gaps: one file without an address, one with an empty total
    assert result.problem_counts.get("missing_entity_field") == 1
    assert result.problem_counts.get("empty_entity_field") == 1
    assert result.entity_counts["address"].expected == len(box_files) - 1
    assert result.entity_counts["total"].expected == len(box_files) - 1
    for column in ("x0", "y0", "x1", "y1"):
        assert frame[column].between(0.0, 1.0).all()
    assert (frame["x0"] <= frame["x1"]).all() and (frame["y0"] <= frame["y1"]).all()
    assert frame["labels"].map(len).max() == 1
    _assert_each_entity_is_one_contiguous_run(frame)


def _assert_each_entity_is_one_contiguous_run(frame: pd.DataFrame) -> None:
    ordered = frame.sort_values(["image_id", "line_id", "word_id"]).reset_index(drop=True)
    ordered["position"] = ordered.groupby("image_id").cumcount()
    spans = ordered.dropna(subset=["label"]).groupby(["image_id", "label"])["position"].agg(["min", "max", "count"])
    assert (spans["max"] - spans["min"] + 1 == spans["count"]).all()
