"""The ICDAR 2019 SROIE task 3 layout read into the word table, with the key entities tagged.

Layout, under a local folder or an ``s3://bucket/prefix`` root::

    <split>/box/<image_id>.txt       one OCR line per row: x1,y1,x2,y2,x3,y3,x4,y4,TEXT (pixels)
    <split>/entities/<image_id>.txt  JSON {"company", "date", "address", "total"}; some copies say key/

Each OCR line is split into words on whitespace. A word's box shares the line's x-span in proportion
to character positions and takes the line's full height: SROIE boxes lines, not words.

Coordinates: SROIE pixels already point down, but SROIE ships no image sizes, so a receipt's extent
is estimated as the furthest box corner (max x, max y over all its lines) and coordinates are
divided by it. The right-most and bottom-most text therefore touch 1.0 and the real page margins
are lost; boxes of different receipts are comparable in shape, not in absolute page position.

Tagging matches each entity string against the words in reading order. The entity strings are
typed by annotators and do not always equal the OCR text, so company and address match fuzzily
(the best contiguous run of words), date and total exactly after a normalisation that only folds
differences which cannot change the value (case, spacing, date separators, currency prefixes,
thousands separators, trailing zeros). A word carries at most one tag and each entity's words are
one contiguous run.

Nothing is dropped silently: every file or line that could not be fully used is reported in
``SroieResult.problems`` with the file it came from.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from rapidfuzz import fuzz, process

from receipt_pipeline.core import storage
from receipt_pipeline.core.word_table import COLUMNS, REFERENCE_FIELDS_ATTR, SOURCE_SROIE, receipt_key, to_frame

__all__ = [
    "ENTITY_FIELDS",
    "ENTITY_PROBLEMS",
    "LABEL_BY_FIELD",
    "EntityCount",
    "Problem",
    "SroieResult",
    "read_sroie",
    "read_sroie_folder",
]

ENTITY_FIELDS = ("company", "date", "address", "total")
LABEL_BY_FIELD = {"company": "COMPANY", "date": "DATE", "address": "ADDRESS", "total": "TOTAL"}
BOX_FOLDER = "box"
# the official download says entities/, some redistributions say key/
ENTITY_FOLDERS = ("entities", "key")

# A fuzzy run at or above this rapidfuzz ratio (0..100) counts as the entity; below it the OCR text is
# too far from the annotation to say which words were meant.
FUZZY_MATCH_THRESHOLD = 80.0
# Fuzzy candidate runs span between these shares of the entity's length, so that OCR noise
# (dropped or doubled characters, a stray symbol) can still align.
FUZZY_MIN_LENGTH_SHARE = 0.6
FUZZY_MAX_LENGTH_SHARE = 1.5
# Lines whose vertical centres differ by less than this share of the receipt's median line height
# are one printed row.
ROW_TOLERANCE_SHARE = 0.5
# a SROIE scan is one receipt
SROIE_RECEIPT_ID = 1


class Problem(NamedTuple):
    """A file or line that could not be fully used."""

    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


class EntityCount(NamedTuple):
    found: int
    expected: int


@dataclass
class SroieResult:
    frame: pd.DataFrame
    receipts: dict[str, int]  # split -> receipts read
    coverage: dict[str, float]  # field -> share of non-empty entities that were tagged
    entity_counts: dict[str, EntityCount]
    problems: list[Problem] = field(default_factory=list)
    # image id -> field -> the reference string, as the entity files give it (what field-level scoring compares)
    entities: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def problem_counts(self) -> dict[str, int]:
        """Problems per kind."""
        return dict(Counter(problem.kind for problem in self.problems))


@dataclass(frozen=True)
class OcrLine:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre_y(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass
class Word:
    text: str
    line_id: int
    word_id: int
    row: int  # printed row, several lines may share one
    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None = None


@dataclass
class _Tally:
    found: Counter = field(default_factory=Counter)
    expected: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------------------------------
# reading


def read_sroie(root: str, splits: Sequence[str] | None = None) -> SroieResult:
    """Every receipt under ``root`` (a folder or ``s3://bucket/prefix``) as one tagged word table.

    ``splits`` defaults to every subfolder of ``root`` that has a ``box/`` folder; finding none
    raises FileNotFoundError. A named split without ``box/`` is reported as a problem instead.
    """
    root = str(root)
    files_by_split = _list_split_files(root)
    if splits is None:
        splits = sorted(split for split, folders in files_by_split.items() if BOX_FOLDER in folders)
        if not splits:
            # most likely a wrong root: an empty table would pass for a dataset with no receipts
            raise FileNotFoundError(f"no SROIE split (a folder holding {BOX_FOLDER}/) under {root}")
    problems: list[Problem] = []
    tally = _Tally()
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    receipts: dict[str, int] = {}
    entities: dict[str, dict[str, str]] = {}
    for split in splits:
        receipts[split] = _read_split(root, split, files_by_split.get(split, {}), columns, tally, problems, entities)
    frame = to_frame(columns)
    # carried with the words, so that the evaluation scores against the strings these words were read with
    frame.attrs[REFERENCE_FIELDS_ATTR] = {
        receipt_key(SOURCE_SROIE, image_id, SROIE_RECEIPT_ID): fields for image_id, fields in entities.items()
    }
    return SroieResult(
        frame=frame,
        receipts=receipts,
        coverage={
            name: tally.found[name] / tally.expected[name] if tally.expected[name] else math.nan
            for name in ENTITY_FIELDS
        },
        entity_counts={name: EntityCount(tally.found[name], tally.expected[name]) for name in ENTITY_FIELDS},
        problems=problems,
        entities=entities,
    )


# problems with the annotations alone: the words are read whole, which is all a prediction needs
ENTITY_PROBLEMS = frozenset(
    {
        "missing_entity_folder",
        "missing_entity_file",
        "missing_box_file",
        "unparsable_entities",
        "missing_entity_field",
        "empty_entity_field",
        "entity_not_found",
    }
)


def read_sroie_folder(folder: str) -> SroieResult:
    """:func:`read_sroie` of a SROIE-layout folder (every split in it), or of one split folder itself."""
    root = str(folder).rstrip("/")
    if storage.is_dir(storage.join(root, BOX_FOLDER)):
        parent, name = root.rsplit("/", 1) if storage.is_s3(root) else (str(Path(root).parent), Path(root).name)
        return read_sroie(parent, [name])
    return read_sroie(root)


def _list_split_files(root: str) -> dict[str, dict[str, dict[str, str]]]:
    """split -> folder -> file name -> uri, from one listing of the root (one LIST call tree on S3)."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for uri in storage.list_files(root):
        parts = _relative_parts(root, uri)
        if len(parts) == 3:
            split, folder, name = parts
            found.setdefault(split, {}).setdefault(folder, {})[name] = uri
    return found


def _relative_parts(root: str, uri: str) -> tuple[str, ...]:
    if storage.is_s3(root):
        prefix = root.rstrip("/") + "/"
        relative = uri[len(prefix) :] if uri.startswith(prefix) else uri
        return tuple(part for part in relative.split("/") if part)
    return Path(uri).relative_to(Path(root)).parts


def _read_split(
    root: str,
    split: str,
    folders: dict[str, dict[str, str]],
    columns: dict[str, list],
    tally: _Tally,
    problems: list[Problem],
    entities_by_id: dict[str, dict[str, str]],
) -> int:
    split_uri = storage.join(root, split)
    box_files = folders.get(BOX_FOLDER)
    if box_files is None:
        problems.append(Problem(split_uri, "missing_box_folder", f"split {split!r} has no {BOX_FOLDER}/ folder"))
        return 0
    entity_folder = next((name for name in ENTITY_FOLDERS if name in folders), None)
    entity_files = folders.get(entity_folder, {}) if entity_folder else {}
    if entity_folder is None:
        problems.append(
            Problem(
                split_uri,
                "missing_entity_folder",
                f"split {split!r} has neither {' nor '.join(f'{n}/' for n in ENTITY_FOLDERS)}: words untagged",
            )
        )

    box_by_id = _text_files_by_stem(box_files, problems)
    entity_by_id = _text_files_by_stem(entity_files, problems)
    for image_id in sorted(set(entity_by_id) - set(box_by_id)):
        problems.append(Problem(entity_by_id[image_id], "missing_box_file", "entity file has no box file"))

    for image_id, box_uri in sorted(box_by_id.items()):
        lines = _parse_box_file(_decode(storage.read_bytes(box_uri), box_uri, problems), box_uri, problems)
        words = _words_in_reading_order(lines)
        if not words:
            problems.append(Problem(box_uri, "no_words", "box file has no usable line"))
        entity_uri = entity_by_id.get(image_id)
        if entity_uri is not None:
            entities = _parse_entities(
                _decode(storage.read_bytes(entity_uri), entity_uri, problems), entity_uri, problems
            )
            _tag_entities(words, entities, entity_uri, tally, problems)
            entities_by_id[image_id] = dict(entities)
        elif entity_folder is not None:
            problems.append(Problem(box_uri, "missing_entity_file", "box file has no entity file: words untagged"))
        _append_rows(columns, split, image_id, words, lines)
    return len(box_by_id)


def _text_files_by_stem(files: dict[str, str], problems: list[Problem]) -> dict[str, str]:
    by_stem: dict[str, str] = {}
    for name, uri in files.items():
        if name.lower().endswith(".txt"):
            by_stem[name[: -len(".txt")]] = uri
        else:
            problems.append(Problem(uri, "unexpected_file", "not a .txt file: ignored"))
    return by_stem


def _decode(data: bytes, path: str, problems: list[Problem]) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # cp1252 is what Windows tools wrote these receipts in; latin-1 decodes any byte at all
        encoding = "cp1252"
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            encoding = "latin-1"
            text = data.decode(encoding)
        problems.append(
            Problem(path, "non_utf8", f"not UTF-8 (byte {data[error.start]:#04x} at {error.start}): read as {encoding}")
        )
    if "\ufffd" in text:
        problems.append(Problem(path, "replacement_characters", "text holds U+FFFD replacement characters"))
    return text


# str.splitlines would also split on \x85, \x0c and friends, which latin-1 text can hold mid-line
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _parse_box_file(text: str, path: str, problems: list[Problem]) -> list[OcrLine]:
    lines = []
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        if not raw.strip():
            continue
        line = _parse_box_line(raw, f"{path}:{number}", problems)
        if line is not None:
            lines.append(line)
    return lines


def _parse_box_line(raw: str, where: str, problems: list[Problem]) -> OcrLine | None:
    # the text may hold commas itself: only the first eight separate coordinates
    fields = raw.split(",", 8)
    if len(fields) < 8:
        problems.append(Problem(where, "short_box_line", f"fewer than 8 coordinates: {raw!r}"))
        return None
    try:
        coordinates = [float(value) for value in fields[:8]]
    except ValueError:
        problems.append(Problem(where, "bad_coordinates", f"non-numeric coordinates: {raw!r}"))
        return None
    if not all(math.isfinite(value) for value in coordinates):
        problems.append(Problem(where, "bad_coordinates", f"non-finite coordinates: {raw!r}"))
        return None
    text = fields[8].strip() if len(fields) == 9 else ""
    if not text:
        problems.append(Problem(where, "empty_box_text", "box line has no text"))
        return None
    xs, ys = coordinates[0::2], coordinates[1::2]
    return OcrLine(text=text, x0=min(xs), y0=min(ys), x1=max(xs), y1=max(ys))


def _parse_entities(text: str, path: str, problems: list[Problem]) -> dict[str, str]:
    """field -> non-empty entity string; missing and empty fields are reported, not expected."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(Problem(path, "unparsable_entities", f"not JSON: {error}"))
        return {}
    if not isinstance(document, dict):
        problems.append(Problem(path, "unparsable_entities", f"not a JSON object but {type(document).__name__}"))
        return {}
    entities = {}
    for name in ENTITY_FIELDS:
        if name not in document:
            problems.append(Problem(path, "missing_entity_field", f"no {name!r}"))
            continue
        value = document[name]
        value = "" if value is None else str(value).strip()
        if not value:
            problems.append(Problem(path, "empty_entity_field", f"{name!r} is empty"))
            continue
        entities[name] = value
    return entities


# --------------------------------------------------------------------------------------------------
# layout


def _reading_order_rows(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Lines grouped into printed rows, top to bottom, each row left to right.

    Box files do not always list lines in reading order, and a price sits in its own box on the
    same row as its label, so rows are clustered on the vertical centre before sorting by x.
    """
    if not lines:
        return []
    tolerance = ROW_TOLERANCE_SHARE * statistics.median(line.height for line in lines)
    rows: list[list[OcrLine]] = []
    row_centre = 0.0
    for line in sorted(lines, key=lambda line: (line.centre_y, line.x0)):
        if rows and abs(line.centre_y - row_centre) <= tolerance:
            rows[-1].append(line)
            row_centre = statistics.fmean(member.centre_y for member in rows[-1])
        else:
            rows.append([line])
            row_centre = line.centre_y
    return [sorted(row, key=lambda line: line.x0) for row in rows]


_WORD = re.compile(r"\S+")


def _words_in_reading_order(lines: Sequence[OcrLine]) -> list[Word]:
    words = []
    line_id = 0
    for row_index, row in enumerate(_reading_order_rows(lines)):
        for line in row:
            line_id += 1
            words.extend(_split_line(line, line_id, row_index))
    return words


def _split_line(line: OcrLine, line_id: int, row: int) -> list[Word]:
    # SROIE boxes whole lines: a word's share of the width follows its character positions
    scale = (line.x1 - line.x0) / len(line.text)
    return [
        Word(
            text=match.group(),
            line_id=line_id,
            word_id=word_id,
            row=row,
            x0=line.x0 + scale * match.start(),
            y0=line.y0,
            x1=line.x0 + scale * match.end(),
            y1=line.y1,
        )
        for word_id, match in enumerate(_WORD.finditer(line.text), start=1)
    ]


# --------------------------------------------------------------------------------------------------
# tagging


def _tag_entities(
    words: list[Word], entities: dict[str, str], path: str, tally: _Tally, problems: list[Problem]
) -> None:
    # exact matches first: they are unambiguous, and the fuzzy runs then cannot swallow their words
    matchers = {
        "date": _match_date,
        "total": _match_total,
        "company": _match_fuzzy,
        "address": _match_fuzzy,
    }
    for name, matcher in matchers.items():
        value = entities.get(name)
        if value is None:
            continue
        tally.expected[name] += 1
        run, detail = matcher(words, value)
        if run is None:
            problems.append(Problem(path, "entity_not_found", f"{name} {value!r}: {detail}"))
            continue
        for word in words[run[0] : run[1]]:
            word.label = LABEL_BY_FIELD[name]
        tally.found[name] += 1


Run = tuple[int, int]  # word indexes [start, end) in reading order


def _untagged_spans(words: Sequence[Word]) -> Iterable[Run]:
    """Maximal runs of words that carry no tag yet: a new run must lie inside one."""
    start = None
    for index, word in enumerate(words):
        if word.label is None and start is None:
            start = index
        elif word.label is not None and start is not None:
            yield start, index
            start = None
    if start is not None:
        yield start, len(words)


def _match_fuzzy(words: Sequence[Word], value: str) -> tuple[Run | None, str]:
    """The contiguous run of untagged words whose text is closest to ``value``.

    Compared on letters and digits only: annotators and OCR disagree on spaces and punctuation far
    more often than on the characters themselves.
    """
    target = _alphanumeric(value)
    if not target:
        return None, "nothing to match"
    keys = [_alphanumeric(word.text) for word in words]
    candidates: list[str] = []
    runs: list[Run] = []
    shortest, longest = FUZZY_MIN_LENGTH_SHARE * len(target), FUZZY_MAX_LENGTH_SHARE * len(target)
    for span_start, span_end in _untagged_spans(words):
        for start in range(span_start, span_end):
            if not keys[start]:
                continue  # a run starts and ends on a word that has letters or digits
            text = ""
            for end in range(start, span_end):
                text += keys[end]
                if len(text) > longest:
                    break
                if keys[end] and len(text) >= shortest:
                    candidates.append(text)
                    runs.append((start, end + 1))
    if not candidates:
        return None, "no run of words of a comparable length"
    _, score, index = process.extractOne(target, candidates, scorer=fuzz.ratio)
    if score < FUZZY_MATCH_THRESHOLD:
        return None, f"best run {candidates[index]!r} scores {score:.0f} < {FUZZY_MATCH_THRESHOLD:.0f}"
    return _with_partly_covered_neighbours(words, keys, runs[index], target, score), ""


def _with_partly_covered_neighbours(
    words: Sequence[Word], keys: Sequence[str], run: Run, target: str, score: float
) -> Run:
    """The run grown by a neighbour word that the entity covers only in part.

    OCR glues neighbours into one word (``BHD(728384-M)``: the company's last word and its
    registration number), and the whole word would score worse than leaving it out. The neighbour
    joins when the part of it next to the run improves the match.
    """
    start, end = run
    text = "".join(keys[start:end])
    if end < len(words) and words[end].label is None and keys[end]:
        key = keys[end]
        if max(fuzz.ratio(target, text + key[:size]) for size in range(1, len(key) + 1)) > score:
            end += 1
    if start > 0 and words[start - 1].label is None and keys[start - 1]:
        key = keys[start - 1]
        if max(fuzz.ratio(target, key[-size:] + text) for size in range(1, len(key) + 1)) > score:
            start -= 1
    return start, end


_NOT_ALPHANUMERIC = re.compile(r"[\W_]+")


def _alphanumeric(text: str) -> str:
    return _NOT_ALPHANUMERIC.sub("", text.upper())


def _match_date(words: Sequence[Word], value: str) -> tuple[Run | None, str]:
    """The first run of words that spells the date, preferring a row that says DATE."""
    target = _date_key(value).strip("()[]:;,. ")
    if not target:
        return None, "nothing to match"
    runs = list(_exact_runs(words, target, _date_key))
    if not runs:
        return None, "no run of words spells it"
    rows = _row_texts(words)
    dated = [run for run in runs if "DATE" in rows[words[run[0]].row]]
    return (dated or runs)[0], ""


def _date_key(text: str) -> str:
    # 25/12/2018, 25-12-2018 and 25.12.2018 are one date; nothing else is folded
    return re.sub(r"[-./]", "/", re.sub(r"\s+", "", text.upper()))


def _exact_runs(words: Sequence[Word], target: str, key: Callable[[str], str]) -> Iterable[Run]:
    """Runs of untagged words whose joined keys hold ``target`` as a whole token.

    A token boundary is a change between letter, digit and other, so ``DATE:11/03/18`` and
    ``21/05/2018TIME:`` hold their dates while ``111/03/18`` does not hold ``11/03/18``.
    """
    for span_start, span_end in _untagged_spans(words):
        keys = [key(word.text) for word in words[span_start:span_end]]
        joined = "".join(keys)
        starts = []
        offset = 0
        for word_key in keys:
            starts.append(offset)
            offset += len(word_key)
        word_edges = {*starts, len(joined)}
        for match in re.finditer(re.escape(target), joined):
            begin, end = match.start(), match.end()
            if not _is_token_edge(joined, begin, word_edges) or not _is_token_edge(joined, end, word_edges):
                continue
            first = _word_at(starts, begin)
            last = _word_at(starts, end - 1)
            yield span_start + first, span_start + last + 1


def _is_token_edge(text: str, offset: int, word_edges: set[int]) -> bool:
    if offset in word_edges:
        return True
    return _char_class(text[offset - 1]) != _char_class(text[offset])


def _char_class(char: str) -> str:
    return "digit" if char.isdigit() else "letter" if char.isalpha() else "other"


def _word_at(starts: list[int], offset: int) -> int:
    return bisect.bisect_right(starts, offset) - 1


def _row_texts(words: Sequence[Word]) -> dict[int, str]:
    """row -> its text upper-cased without spaces, which is how labels like TOTAL and DATE are spotted."""
    parts: dict[int, list[str]] = {}
    for word in words:
        parts.setdefault(word.row, []).append(word.text.upper())
    return {row: "".join(texts) for row, texts in parts.items()}


_AMOUNT = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def _amounts(text: str, *, with_decimals: bool = False) -> list[Decimal]:
    """The numbers in ``text``, thousands separators removed. RM1.38 and TOTAL:9.00 hold one each."""
    values = []
    for match in _AMOUNT.finditer(text):
        if with_decimals and "." not in match.group():
            continue
        try:
            values.append(Decimal(match.group().replace(",", "")))
        except InvalidOperation:
            continue
    return values


def _match_total(words: Sequence[Word], value: str) -> tuple[Run | None, str]:
    """The word holding the total amount, preferring one on or beside a row that says TOTAL.

    The amount usually appears several times (item price, subtotal, total, cash tendered). A word
    on the TOTAL row wins, then one on a row next to it (the amount is sometimes printed below
    its label), then a SUBTOTAL row, then any; among equals the last, since the payable total
    follows the items it sums.
    """
    amounts = _amounts(value)
    if len(amounts) != 1:
        return None, "not a single amount"
    target = amounts[0]
    # an amount with decimals must not match a whole number: a quantity, or OCR that lost the cents
    needs_decimal = "." in value
    rows = _row_texts(words)
    best: tuple[int, int] | None = None
    for span_start, span_end in _untagged_spans(words):
        for index in range(span_start, span_end):
            if target not in _amounts(words[index].text, with_decimals=needs_decimal):
                continue
            rank = (_total_row_rank(rows, words[index].row), index)
            best = max(best, rank) if best else rank
    if best is None:
        return None, "no word holds the amount"
    return (best[1], best[1] + 1), ""


def _total_row_rank(rows: dict[int, str], row: int) -> int:
    own = rows.get(row, "")
    if _says_total(own):
        return 3
    if "SUBTOTAL" in _letters(own):
        return 1
    # only a TOTAL label without a number of its own lends it to a neighbour (TOTAL QTY : 15 does not)
    neighbours = (rows.get(row - 1, ""), rows.get(row + 1, ""))
    if any(_says_total(text) and not re.search(r"\d", text) for text in neighbours):
        return 2
    return 0


def _says_total(row_text: str) -> bool:
    letters = _letters(row_text)
    return letters.count("TOTAL") > letters.count("SUBTOTAL")


def _letters(text: str) -> str:
    return re.sub(r"[^A-Z]", "", text)


# --------------------------------------------------------------------------------------------------
# output


def _append_rows(
    columns: dict[str, list], split: str, image_id: str, words: Sequence[Word], lines: Sequence[OcrLine]
) -> None:
    if not words:
        return
    # no image sizes in SROIE: the furthest box corner stands in for the page's extent
    width = _extent(line.x1 for line in lines)
    height = _extent(line.y1 for line in lines)
    for word in words:
        columns["source"].append(SOURCE_SROIE)
        columns["source_split"].append(split)
        columns["image_id"].append(image_id)
        columns["receipt_id"].append(SROIE_RECEIPT_ID)
        columns["line_id"].append(word.line_id)
        columns["word_id"].append(word.word_id)
        columns["text"].append(word.text)
        columns["x0"].append(_unit(word.x0 / width))
        columns["y0"].append(_unit(word.y0 / height))
        columns["x1"].append(_unit(word.x1 / width))
        columns["y1"].append(_unit(word.y1 / height))
        columns["confidence"].append(math.nan)
        columns["labels"].append([word.label] if word.label else [])
        columns["label"].append(word.label)


def _extent(far_edges: Iterable[float]) -> float:
    furthest = max(far_edges, default=0.0)
    return furthest if furthest > 0 else 1.0


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))
