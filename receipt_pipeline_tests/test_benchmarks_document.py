"""`make bench` rewrites only its own blocks of BENCHMARKS.md."""

from __future__ import annotations

from benchmarks.__main__ import BENCHMARKS, DEFAULT, DOCUMENT, write_section


def test_a_section_replaces_its_block_keeps_the_findings_around_it_and_a_new_one_is_appended(tmp_path):
    document = tmp_path / "BENCHMARKS.md"
    document.write_text(
        "# Benchmarks\n\nFindings on windowing.\n\n<!-- bench:windowing -->\nold table\n<!-- /bench:windowing -->\n"
        "\nMore findings.\n"
    )
    write_section(document, "windowing", "### windowing\n\nnew table")
    write_section(document, "demo", "### demo\n\n| 1 |")

    text = document.read_text()
    assert "old table" not in text and "new table" in text
    assert text.index("Findings on windowing.") < text.index("new table") < text.index("More findings.")
    assert text.rstrip().endswith("<!-- bench:demo -->\n### demo\n\n| 1 |\n<!-- /bench:demo -->")
    assert not list(tmp_path.glob("*.partial"))


def test_every_default_benchmark_has_its_block_in_the_committed_document():
    text = DOCUMENT.read_text()
    assert set(DEFAULT) <= set(BENCHMARKS)
    for name in DEFAULT:
        assert f"<!-- bench:{name} -->" in text and f"<!-- /bench:{name} -->" in text, name
