"""The layout families: each file loads, a bad one is refused naming the file and the problem, a new family is one
file, and the receipts printed from them show the features of real US receipts they declare."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from receipt_pipeline.core import receipt_layouts
from receipt_pipeline.core.receipt_layouts import LayoutError, load_family
from receipt_pipeline.core.receipt_values import read_amount, read_date
from receipt_pipeline.core.synthetic import iter_synthetic_receipts

MINIMAL = """
family = "florist"
share = 0.1
merchants = ["PETAL AND STEM"]
products = ["ROSES DOZEN", "TULIPS"]
price_cents = [500, 4500]
item_lines = [1, 4]

[[item_style]]
name = "name and total"
lines = ["{name} | {total}"]
"""


def test_every_family_shipped_loads_with_shares_that_add_up_and_merchants_of_their_own():
    families = receipt_layouts.families()
    assert len(families) >= 10
    assert sum(family.share for family in families) == pytest.approx(1.0)
    merchants = [merchant for family in families for merchant in family.merchants]
    assert len(merchants) == len(set(merchants))


def test_a_new_kind_of_store_is_one_file(tmp_path: Path):
    path = tmp_path / "florist.toml"
    path.write_text(MINIMAL)
    family = load_family(path)
    assert family.merchants == ("PETAL AND STEM",)
    [style] = family.styles
    [line] = style.lines
    assert [word.label for word in line.left] == ["PRODUCT_NAME"] and [word.label for word in line.right] == [
        "LINE_TOTAL"
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ('lines = ["{name} | {total}"]', 'lines = ["{name} | {totl}"]'),
            r"item_style .*unknown field \{totl\}",
        ),
        (('lines = ["{name} | {total}"]', 'lines = ["{name}s | {total}"]'), r"\{name\} must be a word of its own"),
        (('lines = ["{name} | {total}"]', 'lines = ["{name} {date} | {total}"]'), r"receipt field \{date\} in an item"),
        (("item_lines = [1, 4]", "item_lines = [4, 1]"), r"item_lines: expected 0 < low <= high"),
        (("share = 0.1", 'share = "lots"'), r"florist.toml share: share must be a number in 0..1"),
        (('merchants = ["PETAL AND STEM"]\n', ""), r"florist.toml: missing 'merchants'"),
        (("[[item_style]]", "[[item_style]"), r"florist.toml: not TOML"),
    ],
)
def test_a_bad_family_file_is_refused_naming_the_file_and_the_problem(tmp_path: Path, change, problem):
    path = tmp_path / "florist.toml"
    path.write_text(MINIMAL.replace(*change))
    with pytest.raises(LayoutError, match=problem):
        load_family(path)


def test_a_block_outside_the_items_may_not_print_an_items_field(tmp_path: Path):
    path = tmp_path / "florist.toml"
    path.write_text(MINIMAL + '\n[[block]]\nplace = "footer"\nlines = ["{sku}"]\n')
    with pytest.raises(LayoutError, match=r"block 1 line 1: item field \{sku\} outside an item's lines"):
        load_family(path)
    path.write_text(MINIMAL + '\n[[block]]\nplace = "middle"\nlines = ["HI"]\n')
    with pytest.raises(LayoutError, match=r"place must be one of header, after_items"):
        load_family(path)


@pytest.fixture(scope="module")
def receipts():
    return list(iter_synthetic_receipts(600, 5))


def test_every_family_prints_and_every_feature_it_declares_shows_on_its_receipts(receipts):
    by_family: dict[str, Counter] = {}
    for receipt in receipts:
        by_family.setdefault(receipt.family, Counter()).update(receipt.features)
    families = receipt_layouts.families()
    assert set(by_family) == {family.name for family in families}
    for family in families:
        missing = {feature for feature in family.features if not by_family[family.name][feature]}
        assert not missing, f"{family.name} declares {sorted(missing)} but printed none"


def _printed(receipt) -> list[str]:
    return [" ".join(word.printed_text for word in line.words) for line in receipt.lines]


def test_the_features_are_what_real_receipts_print_and_are_labelled_as_the_users_label_them(receipts):
    seen = Counter()
    for receipt in receipts:
        words = [word for line in receipt.lines for word in line.words]
        lines = _printed(receipt)
        if "savings lines" in receipt.features:
            # printed with a trailing minus (3.00- or 3.00-A), a DISCOUNT read as negative
            savings = [w for w in words if w.truth == "DISCOUNT" and w.printed_text.rstrip("AEFNT").endswith("-")]
            assert savings and all(read_amount(w.printed_text).startswith("-") for w in savings), receipt.merchant
            seen["savings"] += 1
        if "weighed items" in receipt.features:
            assert any(" lb " in line and "/lb" in line for line in lines), receipt.merchant
            seen["weighed"] += 1
        if "long-form dates" in receipt.features:
            date = " ".join(w.printed_text for w in words if w.truth == "DATE")
            assert read_date(date, "MDY") == receipt.facts.date, date
            seen["long date"] += 1
        merged = "split and merged words" in receipt.features  # "RETURNBYAPR 02, 2025" reads as no date
        if "return policies and coupons with their dates" in receipt.features and not merged:
            # a date that is not the receipt's, and not labelled DATE
            unlabelled = [" ".join(w.printed_text for w in line.words if w.truth is None) for line in receipt.lines]
            dates = {read_date(text, "MDY") for text in unlabelled} - {None}
            assert dates and receipt.facts.date not in dates, lines
            seen["expiry"] += 1
        if "total restatements" in receipt.features:
            totals = {read_amount(w.printed_text) for w in words if w.truth == "GRAND_TOTAL"}
            assert totals == {receipt.facts.total}
            seen["restated"] += 1
        if "tax flags" in receipt.features:
            assert any(w.truth is None and w.printed_text in {"A", "E", "T", "N", "NF"} for w in words)
            seen["flags"] += 1
    assert all(seen[name] >= 10 for name in ("savings", "weighed", "long date", "expiry", "restated", "flags")), seen
