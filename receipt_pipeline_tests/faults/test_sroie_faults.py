"""SROIE faults beyond the quirks core/test_sroie.py already covers: an empty box file, a missing entities
file counted in the asset's metadata, and the quirks of the real training files, written here as small
hand-made receipts in their shape (no line of the real data is copied).
"""

from __future__ import annotations

import json

from receipt_pipeline.core.sroie import read_sroie
from receipt_pipeline.defs import ingestion
from receipt_pipeline_tests.core.test_sroie import RECEIPT, box_line, problem_kinds, tagged_text, write_receipt
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _materialize, _metadata


def test_an_empty_box_file_is_counted_and_its_entities_reported_unfound(tmp_path):
    write_receipt(tmp_path, "GOOD", RECEIPT)
    empty = write_receipt(tmp_path, "EMPTY", [])
    empty.write_bytes(b"")  # zero bytes
    blank = write_receipt(tmp_path, "BLANK", [], entities=None)
    blank.write_bytes(b"\r\n  \n")  # only line breaks and spaces
    (tmp_path / "train" / "entities" / "BLANK.txt").write_text(
        json.dumps({"company": "", "date": "", "address": "", "total": ""})
    )

    result = read_sroie(str(tmp_path))

    assert result.receipts == {"train": 3}
    assert problem_kinds(result, empty) == {"no_words"} and problem_kinds(result, blank) == {"no_words"}
    # its four entities were expected and none could be found: reported, and the coverage says so
    unfound = [p for p in result.problems if p.path.endswith("entities/EMPTY.txt")]
    assert sorted(p.detail.split(" ")[0] for p in unfound) == ["address", "company", "date", "total"]
    assert all(p.kind == "entity_not_found" for p in unfound)
    assert result.entity_counts["company"] == (1, 2)
    assert set(result.frame["image_id"]) == {"GOOD"}, "no rows for a receipt without words"


def test_missing_entities_file_and_empty_box_file_are_counted_in_the_assets_metadata(tmp_path):
    root = tmp_path / "sroie"
    write_receipt(root, "GOOD", RECEIPT)
    write_receipt(root, "UNTAGGED", RECEIPT, entities=None)  # box file, no entities file
    write_receipt(root, "EMPTY", [], entities=None).write_bytes(b"")
    (root / "train" / "entities" / "EMPTY.txt").write_text(
        json.dumps({"company": "", "date": "", "address": "", "total": ""})
    )
    settings = _local_settings(tmp_path, "unused", sroie_dir=str(root))

    result = _materialize(settings, ingestion.sroie_receipts)

    assert result.success
    metadata = _metadata(result, "sroie_receipts")
    assert metadata["receipts_per_split"] == {"train": 3}
    assert metadata["problems_by_reason"] == {"missing_entity_file": 1, "no_words": 1, "empty_entity_field": 4}
    assert metadata["problems"] == 6
    files = metadata["problem_files"]
    assert f"{root}/train/box/UNTAGGED.txt: missing_entity_file: box file has no entity file: words untagged" in files
    assert f"{root}/train/box/EMPTY.txt: no_words: box file has no usable line" in files
    # the untagged receipt is still read, its words without labels
    assert metadata["words"] == 2 * len(_words(RECEIPT))


def _words(lines: list[str]) -> list[str]:
    return [word for line in lines for word in line.split(",", 8)[8].split()]


# Shaped like the real training files: LF endings (most of them) and a final line break, the company's
# registration number in brackets after its name, a date with the month's name, prices with "$", a total
# before rounding on a "TOTAL:" row and the rounded total on a "TOTAL" row, text ending with a comma, a
# price box a few pixels off its label's row, listed out of reading order.
SHAPED_LIKE_THE_REAL_FILES = [
    box_line(150, 40, 560, 80, "KEDAI RUNCIT MAJU JAYA SDN BHD (123456-X)"),
    box_line(100, 90, 600, 120, "LOT 7, JALAN INDAH 2/3,"),
    box_line(120, 125, 580, 150, "TAMAN INDAH, 81200 JOHOR BAHRU,"),
    box_line(200, 160, 420, 185, "TEL: 07- 5551234"),
    box_line(180, 200, 330, 225, "14 MAR 2018"),
    box_line(500, 243, 570, 267, "$3.50"),
    box_line(20, 240, 200, 265, "ROTI CANAI"),
    box_line(500, 273, 570, 297, "$3.89"),
    box_line(20, 270, 200, 295, "TEH TARIK"),
    box_line(20, 310, 150, 335, "TOTAL:"),
    box_line(470, 305, 580, 330, "$7.39"),
    box_line(500, 340, 570, 365, "$0.01"),
    box_line(20, 380, 160, 410, "TOTAL"),
    box_line(350, 375, 560, 408, "$7.40"),
    box_line(150, 440, 560, 470, "THANK YOU, PLEASE COME AGAIN"),
]
SHAPED_ENTITIES = {
    "company": "KEDAI RUNCIT MAJU JAYA SDN BHD",
    "date": "14 MAR 2018",
    "address": "LOT 7, JALAN INDAH 2/3,TAMAN INDAH, 81200 JOHOR BAHRU",  # no space after a comma, no last one
    "total": "$7.40",
}
# a credit note: a negative total, and an entity file without the address (one real file lacks it)
CREDIT_NOTE = [
    box_line(60, 30, 480, 60, "ROTI SEGAR BAKERIES (KL) SDN BHD"),
    box_line(60, 100, 300, 125, "CREDIT NOTE 29/09/2017"),
    box_line(20, 150, 200, 175, "ROTI GANDUM"),
    box_line(430, 150, 500, 175, "-1.73"),
    box_line(20, 190, 200, 215, "TOTAL"),
    box_line(430, 190, 500, 215, "-1.73"),
]
CREDIT_ENTITIES = {"company": "ROTI SEGAR BAKERIES (KL) SDN BHD", "date": "29/09/2017", "total": "-1.73"}


def test_receipts_shaped_like_the_real_files_are_read_with_every_entity_tagged(tmp_path):
    write_receipt(tmp_path, "SHAPED", []).write_bytes(("\n".join(SHAPED_LIKE_THE_REAL_FILES) + "\n").encode())
    (tmp_path / "train" / "entities" / "SHAPED.txt").write_text(json.dumps(SHAPED_ENTITIES, indent=4))
    credit_entities = tmp_path / "train" / "entities" / "CREDIT.txt"
    write_receipt(tmp_path, "CREDIT", CREDIT_NOTE, CREDIT_ENTITIES)

    result = read_sroie(str(tmp_path))

    frame = result.frame
    assert [(p.path, p.kind) for p in result.problems] == [(str(credit_entities), "missing_entity_field")]
    assert tagged_text(frame, "SHAPED", "COMPANY") == "KEDAI RUNCIT MAJU JAYA SDN BHD"
    assert tagged_text(frame, "SHAPED", "DATE") == "14 MAR 2018"
    assert tagged_text(frame, "SHAPED", "ADDRESS") == "LOT 7, JALAN INDAH 2/3, TAMAN INDAH, 81200 JOHOR BAHRU,"
    assert tagged_text(frame, "SHAPED", "TOTAL") == "$7.40", "the rounded total, not the one before rounding"
    assert tagged_text(frame, "CREDIT", "TOTAL") == "-1.73"
    assert tagged_text(frame, "CREDIT", "DATE") == "29/09/2017"
    assert result.entity_counts["address"] == (1, 1)
    assert {name: count.found for name, count in result.entity_counts.items()} == {
        "company": 2,
        "date": 2,
        "address": 1,
        "total": 2,
    }
    shaped = frame[frame["image_id"] == "SHAPED"].sort_values(["line_id", "word_id"])
    texts = shaped["text"].tolist()
    assert texts[texts.index("CANAI") + 1] == "$3.50", "a price follows its label though listed before it"
    assert "BAHRU," in texts and "2/3," in texts, "commas inside and at the end of the text stay text"
