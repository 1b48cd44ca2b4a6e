"""Reads labelled receipt words out of the users' DynamoDB single table.

Two ways to find the data, chosen by ``strategy``:

- ``gsi3``: query the validation-status index (``GSI3``) for the accepted statuses to learn which
  images carry a label, then query each of those image partitions in parallel. Reads only what is
  labelled: cheapest when labelled images are a minority of the table.
- ``scan``: a parallel Scan over the whole table, filtered to words and labels on the server. Fewer
  requests when nearly every image is labelled; pays for every other item in the table.

Either way every item is parsed by :mod:`receipt_pipeline.core.dynamo_schema`; a bad item is
skipped and counted by reason, never silently dropped, and the read fails when bad items pass a
share of what was read.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from receipt_pipeline.core import aws, word_table
from receipt_pipeline.core.dynamo_schema import (
    LABEL_VOCABULARY,
    RECEIPT,
    RECEIPT_WORD,
    RECEIPT_WORD_LABEL,
    BadItem,
    ReceiptKey,
    Word,
    WordKey,
    WordLabel,
    image_id_of,
    image_pk,
    item_key,
    label_in_keys,
    label_sk,
    parse_label,
    parse_word,
    receipt_key_of,
    receipt_sk,
    validation_status_gsi3pk,
    word_key_of,
)
from receipt_pipeline.core.errors import ExplainedError

Strategy = Literal["gsi3", "scan"]
SNAPSHOT_STATUS = "VALID"
# what the label snapshot reads of each label: the label is in its keys only (GSI3SK names it)
SNAPSHOT_ATTRIBUTES = ("GSI3SK", "timestamp_added")
# the snapshot's count for label items whose keys name no label
UNNAMED_LABEL = "(no label in the key)"
MAX_LISTED_BAD_KEYS = 20


class ReceiptReadError(ExplainedError, RuntimeError):
    pass


@dataclass(frozen=True)
class ReadOptions:
    table: str
    accepted_statuses: tuple[str, ...] = ("VALID",)
    # names after merges; empty keeps every label
    label_allowlist: tuple[str, ...] = ()
    label_merges: Mapping[str, str] = field(default_factory=dict)
    read_parallelism: int = 8
    strategy: Strategy = "gsi3"
    max_bad_share: float = 0.05


@dataclass
class ReadResult:
    frame: pd.DataFrame
    table: str
    strategy: str
    receipts: int
    items_read: int  # items DynamoDB evaluated (and bills read capacity for)
    requests: int
    skipped: Counter = field(default_factory=Counter)  # reason -> items
    skipped_keys: list[str] = field(default_factory=list)  # "PK|SK: reason (detail)", the first few
    label_counts: Counter = field(default_factory=Counter)  # final label -> words
    words_with_conflicting_labels: int = 0
    # words whose box overhung the receipt, kept with the box clamped into it
    clamped_words: int = 0
    newest_label_timestamp: str | None = None
    # receipt key (word_table.receipt_key) -> the receipt item's timestamp_added, for the receipts read that have one
    receipt_added: dict[str, str] = field(default_factory=dict)
    # the table's labels of SNAPSHOT_STATUS, counted in the same pass that found the data
    snapshot: LabelSnapshot | None = None

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class _Tally:
    """Counters shared by the reader threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items = 0
        self.requests = 0

    def page(self, evaluated: int) -> None:
        with self._lock:
            self.items += evaluated
            self.requests += 1


_deserializer = TypeDeserializer()


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def _pages(client, operation: str, tally: _Tally, **kwargs) -> Iterator[dict[str, Any]]:
    try:
        for page in client.get_paginator(operation).paginate(**kwargs):
            # what DynamoDB bills for: every item a Scan evaluates, not only those its filter returns
            tally.page(page.get("ScannedCount", len(page.get("Items", []))))
            yield from (_plain(item) for item in page.get("Items", []))
    except ClientError as error:
        explained = _missing_table_or_index(error, client, kwargs["TableName"], kwargs.get("IndexName"))
        if explained is None:
            raise
        raise explained from error


# what each index is queried for, said when a table lacks it
INDEX_USES = {
    "GSI3": "the 'gsi3' read strategy, the label snapshot and the prediction read query it by validation status "
    "(GSI3PK = VALIDATION_STATUS#<status>)",
    "GSITYPE": "the prediction read lists the table's receipts through it (TYPE = RECEIPT)",
}


def _missing_table_or_index(error: ClientError, client, table: str, index: str | None) -> ReceiptReadError | None:
    """A clear error for a table or index that does not exist; None for any other error."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    said = f"(DynamoDB said {code}: {message})"
    where = f"region {client.meta.region_name}, endpoint {client.meta.endpoint_url}"
    # DynamoDB answers a missing index with a ValidationException, the emulator with ResourceNotFound naming it
    index_missing = index is not None and (
        (code == "ValidationException" and "index" in message.lower())
        or (code == "ResourceNotFoundException" and index in message)
    )
    if index_missing:
        return ReceiptReadError(
            f"table {table!r} has no index {index!r} {said}: {INDEX_USES.get(index, 'the reader queries it')}. "
            "Create the index as the schema describes"
            + (", or read with strategy 'scan', which needs no index" if index == "GSI3" else "")
        )
    if code == "ResourceNotFoundException":
        return ReceiptReadError(
            f"table {table!r} does not exist in {where} {said}: check the table's name (RECEIPTS_TABLE, or the "
            "asset's `table` config), the region and the credentials' account"
        )
    return None


# ------------------------------------------------------------------------------------------ fetching


def _labels_with_status(client, table: str, status: str, tally: _Tally, *attributes: str) -> Iterator[dict[str, Any]]:
    """The labels of one validation status, through the GSI3 index, with only ``attributes`` read."""
    names = {f"#a{i}": name for i, name in enumerate(attributes)}  # some names are reserved words
    yield from _pages(
        client,
        "query",
        tally,
        TableName=table,
        IndexName="GSI3",
        KeyConditionExpression="GSI3PK = :status",
        ExpressionAttributeValues={":status": {"S": validation_status_gsi3pk(status)}},
        ProjectionExpression=", ".join(names),
        ExpressionAttributeNames=names,
    )


def labelled_image_ids(
    client, table: str, statuses: Sequence[str], tally: _Tally, counter: _SnapshotCounter | None = None
) -> list[str]:
    """Images with at least one label in ``statuses``, through the GSI3 validation-status index; the labels
    of SNAPSHOT_STATUS are also counted into ``counter``."""
    image_ids: set[str] = set()
    for status in statuses:
        counted = counter if status == SNAPSHOT_STATUS else None
        attributes = ("PK", *SNAPSHOT_ATTRIBUTES) if counted else ("PK",)
        for item in _labels_with_status(client, table, status, tally, *attributes):
            if counted:
                counted.add(item)
            image_id = image_id_of(item.get("PK", ""))
            if image_id is not None:
                image_ids.add(image_id)
    return sorted(image_ids)


def _image_items(client, table: str, image_id: str, tally: _Tally) -> list[dict[str, Any]]:
    return list(
        _pages(
            client,
            "query",
            tally,
            TableName=table,
            KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": image_pk(image_id)}},
        )
    )


def _scan_segment(client, table: str, segment: int, segments: int, tally: _Tally) -> list[dict[str, Any]]:
    return list(
        _pages(
            client,
            "scan",
            tally,
            TableName=table,
            Segment=segment,
            TotalSegments=segments,
            # receipts too: their timestamp_added dates a receipt for the split's `recent` strategy
            FilterExpression="#type IN (:word, :label, :receipt)",
            ExpressionAttributeNames={"#type": "TYPE"},
            ExpressionAttributeValues={
                ":word": {"S": RECEIPT_WORD},
                ":label": {"S": RECEIPT_WORD_LABEL},
                ":receipt": {"S": RECEIPT},
            },
        )
    )


# ------------------------------------------------------------------------------------------ assembly


@dataclass
class _Partial:
    """What one image partition (or one batch of items) contributes to the result."""

    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in word_table.COLUMNS})
    receipts: set[ReceiptKey] = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)
    skipped_keys: list[str] = field(default_factory=list)
    considered: int = 0
    conflicts: int = 0
    clamped: int = 0  # words kept with their box clamped into the receipt
    newest_label_timestamp: str = ""
    receipt_added: dict[ReceiptKey, str] = field(default_factory=dict)  # the receipt item's timestamp_added

    def saw_label_added(self, timestamp: str) -> None:
        # compared as times: the table mixes forms (with and without an offset or microseconds)
        if _sortable(timestamp) > _sortable(self.newest_label_timestamp):
            self.newest_label_timestamp = timestamp

    def skip(self, reason: str, key: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.skipped_keys) < MAX_LISTED_BAD_KEYS:
            self.skipped_keys.append(f"{key}: {reason}" + (f" ({detail})" if detail else ""))


def _item_type(item: Mapping[str, Any]) -> str | None:
    item_type = item.get("TYPE")
    if isinstance(item_type, str):
        return item_type
    sort_key = str(item.get("SK", ""))
    if "#LABEL#" in sort_key:
        return RECEIPT_WORD_LABEL
    if "#WORD#" in sort_key:
        return RECEIPT_WORD
    return None


def _choose_label(labels: list[WordLabel], options: ReadOptions) -> tuple[str | None, bool]:
    """The one label a word trains on, and whether its accepted labels disagreed.

    Merges apply first, then the allowlist. Where several labels survive, the most recently added
    wins (a later validation supersedes an earlier one); ties go to the alphabetically first.
    """
    candidates: dict[str, str] = {}
    for label in labels:
        name = options.label_merges.get(label.label, label.label)
        if options.label_allowlist and name not in options.label_allowlist:
            continue
        candidates[name] = max(candidates.get(name, ""), label.timestamp_added, key=_sortable)
    if not candidates:
        return None, False
    chosen = sorted(candidates.items(), key=lambda kv: (-_sortable(kv[1]), kv[0]))[0][0]
    return chosen, len(candidates) > 1


_sortable = word_table.sortable_time


def _append_word(columns: dict[str, list], key: WordKey, word: Word, labels, label: str | None) -> None:
    """One word-table row (``word_table.COLUMNS``) appended column by column."""
    row = {
        "source": word_table.SOURCE_DYNAMO,
        "source_split": None,
        "image_id": key[0],
        "receipt_id": key[1],
        "line_id": key[2],
        "word_id": key[3],
        "text": word.text,
        "x0": word.x0,
        "y0": word.y0,
        "x1": word.x1,
        "y1": word.y1,
        "confidence": word.confidence,
        "labels": sorted(labels),
        "label": label,
    }
    for name, value in row.items():
        columns[name].append(value)


def assemble(items: Iterable[Mapping[str, Any]], options: ReadOptions) -> _Partial:
    """Words and labels of the receipts that carry an accepted label, from a batch of raw items.

    A batch must hold every item of the receipts in it (one image partition does). Bad items count
    only where they belong to a selected receipt, or to no receipt at all (a malformed key).
    """
    partial = _Partial()
    words: dict[WordKey, Word] = {}
    labels: list[WordLabel] = []
    bad: list[tuple[WordKey | None, BadItem]] = []
    items_per_receipt: Counter = Counter()
    seen: set[str] = set()
    receipt_added: dict[ReceiptKey, str] = {}
    for item in items:
        item_type = _item_type(item)
        if item_type == RECEIPT:
            receipt = receipt_key_of(item)
            if receipt is not None and isinstance(item.get("timestamp_added"), str):
                receipt_added[receipt] = item["timestamp_added"]
            continue
        if item_type not in (RECEIPT_WORD, RECEIPT_WORD_LABEL):
            continue  # receipts, lines and other item types are not this reader's business
        key = word_key_of(item)
        if key is not None:
            items_per_receipt[key[:2]] += 1
        # a table holds one item per key; the same key twice means a read delivered it twice
        identity = item_key(item)
        if identity in seen:
            bad.append((key, BadItem("duplicate_item", identity, "the same key was read twice")))
            continue
        seen.add(identity)
        try:
            if item_type == RECEIPT_WORD:
                word = parse_word(item)
                words[word.key] = word
            else:
                labels.append(parse_label(item))
        except BadItem as error:
            bad.append((key, error))

    bad_keys = {key for key, _ in bad}  # words whose own items (or their labels' items) were unusable
    accepted: dict[WordKey, list[WordLabel]] = defaultdict(list)
    known = {*LABEL_VOCABULARY, *options.label_merges, *options.label_allowlist}
    receipts: set[ReceiptKey] = set()
    for label in labels:
        if label.validation_status not in options.accepted_statuses:
            continue
        receipts.add(label.key[:2])
        if label.label in known:
            accepted[label.key].append(label)
        else:  # a typo or a label nobody configured: never trained on as if it were one
            sk = label_sk(*label.key[1:], label.label)
            bad.append((label.key, BadItem("unknown_label", f"{image_pk(label.key[0])}|{sk}", label.label)))
    partial.receipts = receipts
    partial.receipt_added = {key: stamp for key, stamp in receipt_added.items() if key in receipts}

    for key, error in bad:
        if key is None or key[:2] in partial.receipts:
            partial.skip(error.reason, error.key, error.detail)
    for key, word_labels in accepted.items():
        if key not in words:
            reason = "label_on_bad_word" if key in bad_keys else "label_without_word"
            for label in word_labels:
                partial.skip(reason, f"{image_pk(key[0])}|{label_sk(*key[1:], label.label)}")
    partial.considered = sum(items_per_receipt[r] for r in partial.receipts)
    partial.considered += sum(1 for key, _ in bad if key is None)

    columns = partial.columns
    for key in sorted(k for k in words if k[:2] in partial.receipts):
        word = words[key]
        word_labels = accepted.get(key, [])
        chosen, conflicted = _choose_label(word_labels, options)
        partial.conflicts += conflicted
        partial.clamped += word.clamped
        _append_word(columns, key, word, {label.label for label in word_labels}, chosen)
        for label in word_labels:
            partial.saw_label_added(label.timestamp_added)
    return partial


# ------------------------------------------------------------------------------------------ the read


def read_receipt_words(options: ReadOptions, client=None) -> ReadResult:
    """Every word of every receipt with an accepted label, as a word table; see the module docstring."""
    client = client or aws.client("dynamodb", max_pool_connections=max(10, options.read_parallelism * 2))
    tally = _Tally()
    table = options.table

    counter = _SnapshotCounter()

    def read_image(image_id: str) -> _Partial:
        return assemble(_image_items(client, table, image_id, tally), options)

    def read_segment(segment: int) -> list[dict[str, Any]]:
        return _scan_segment(client, table, segment, options.read_parallelism, tally)

    with ThreadPoolExecutor(max_workers=options.read_parallelism, thread_name_prefix="dynamo-read") as pool:
        if options.strategy == "gsi3":
            image_ids = labelled_image_ids(client, table, options.accepted_statuses, tally, counter)
            partials = list(pool.map(read_image, image_ids))
        elif options.strategy == "scan":
            # segments split the key space, so one image's items may come back from several segments
            batches = list(pool.map(read_segment, range(options.read_parallelism)))
            for batch in batches:
                for item in batch:
                    if _item_type(item) == RECEIPT_WORD_LABEL and item.get("validation_status") == SNAPSHOT_STATUS:
                        counter.add(item)
            partials = [assemble((item for batch in batches for item in batch), options)]
        else:
            raise ValueError(f"unknown read strategy {options.strategy!r}: expected 'gsi3' or 'scan'")
    counted_here = options.strategy == "scan" or SNAPSHOT_STATUS in options.accepted_statuses
    snapshot = counter.snapshot(SNAPSHOT_STATUS) if counted_here else label_snapshot(table, client=client)
    return _combine(partials, options, tally, snapshot)


def _combine(partials: list[_Partial], options: ReadOptions, tally: _Tally, snapshot: LabelSnapshot) -> ReadResult:
    columns = {name: [value for p in partials for value in p.columns[name]] for name in word_table.COLUMNS}
    skipped = sum((p.skipped for p in partials), Counter())
    considered = sum(p.considered for p in partials)
    receipts = set().union(*(p.receipts for p in partials)) if partials else set()
    frame = word_table.to_frame(columns)
    result = ReadResult(
        frame=frame,
        table=options.table,
        strategy=options.strategy,
        receipts=len(receipts),
        items_read=tally.items,
        requests=tally.requests,
        skipped=skipped,
        skipped_keys=[key for p in partials for key in p.skipped_keys][:MAX_LISTED_BAD_KEYS],
        label_counts=Counter(frame["label"].dropna().tolist()),
        words_with_conflicting_labels=sum(p.conflicts for p in partials),
        clamped_words=sum(p.clamped for p in partials),
        newest_label_timestamp=max((p.newest_label_timestamp for p in partials), default="", key=_sortable) or None,
        receipt_added={
            word_table.receipt_key(word_table.SOURCE_DYNAMO, *key): stamp
            for p in partials
            for key, stamp in p.receipt_added.items()
        },
        snapshot=snapshot,
    )
    statuses = ", ".join(options.accepted_statuses)
    if not receipts:
        raise ReceiptReadError(
            f"table {options.table!r}: no receipt has a label with status {statuses}"
            + (f" ({result.skipped_total} bad items skipped: {dict(skipped)})" if skipped else "")
        )
    bad_share = result.skipped_total / max(1, considered)
    if bad_share > options.max_bad_share:
        raise ReceiptReadError(
            f"table {options.table!r}: {result.skipped_total} of {considered} items are bad "
            f"({bad_share:.1%} > the {options.max_bad_share:.1%} threshold): {dict(skipped)}; "
            f"the bad items: {'; '.join(result.skipped_keys)}"
            + (f"; and {unlisted} more" if (unlisted := result.skipped_total - len(result.skipped_keys)) else "")
        )
    return result


# ------------------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True)
class LabelSnapshot:
    """How many labels of one validation status the table holds, per label, and the newest one's time."""

    status: str
    labels: int
    newest_timestamp: str  # ISO 8601 as stored; "" when there is no such label
    per_label: dict[str, int]
    items_evaluated: int

    @property
    def version(self) -> str:
        """Changes whenever a label of this status is added, removed or re-validated (a new timestamp)."""
        return f"{self.status}:{self.labels}:{self.newest_timestamp}"

    def to_dict(self, table: str) -> dict[str, Any]:
        """JSON-ready, with the table's name: what a checkpoint records of the data it was trained on."""
        return {
            "table": table,
            "status": self.status,
            "labels": self.labels,
            "newest_timestamp": self.newest_timestamp,
            "per_label": dict(self.per_label),
            "version": self.version,
        }


class _SnapshotCounter:
    def __init__(self) -> None:
        self.per_label: Counter[str] = Counter()
        self.newest, self._newest_key = "", float("-inf")
        self.items = 0

    def add(self, label_item: Mapping[str, Any]) -> None:
        self.items += 1
        self.per_label[label_in_keys(label_item) or UNNAMED_LABEL] += 1
        stamp = str(label_item.get("timestamp_added", ""))
        if _sortable(stamp) > self._newest_key:
            self.newest, self._newest_key = stamp, _sortable(stamp)

    def snapshot(self, status: str, items_evaluated: int | None = None) -> LabelSnapshot:
        labels = sum(self.per_label.values())
        evaluated = self.items if items_evaluated is None else items_evaluated
        return LabelSnapshot(status, labels, self.newest, dict(sorted(self.per_label.items())), evaluated)


def label_snapshot(table: str, status: str = SNAPSHOT_STATUS, client=None) -> LabelSnapshot:
    """Counts the labels of ``status`` through the GSI3 validation-status index, reading only the label
    name and timestamp of each."""
    client = client or aws.client("dynamodb")
    tally = _Tally()
    counter = _SnapshotCounter()
    for item in _labels_with_status(client, table, status, tally, *SNAPSHOT_ATTRIBUTES):
        counter.add(item)
    return counter.snapshot(status, tally.items)


# ------------------------------------------------------------------------------------------ receipts to predict on

# unlabelled: receipts with words and no VALID label; all: every receipt; since_last_run: receipts added after a time
PredictionScope = Literal["unlabelled", "all", "since_last_run"]
PREDICTION_SCOPES = ("unlabelled", "all", "since_last_run")
# since_last_run reads this far back before the previous read began: a receipt written just before it may not
# have reached the GSITYPE index yet (it is eventually consistent), and its writer's clock is not ours. A
# receipt read twice costs a prediction; its proposals are written once whatever happens
SINCE_OVERLAP_SECONDS = 600.0


@dataclass
class PredictionRead:
    """The words of the receipts chosen for prediction, as a word table whose ``labels`` are each word's VALID
    labels (``label`` is null: nothing here is training data), and what choosing and reading them found."""

    frame: pd.DataFrame
    table: str
    scope: str
    started_at: str  # when the read began (UTC, ISO 8601): the next since_last_run reads receipts added after it
    receipts_in_table: int
    receipts_chosen: int
    receipts: int  # chosen and holding at least one usable word
    receipts_without_words: list[str]  # receipt keys (word_table.receipt_key) chosen but with no usable word
    undated_receipts: int  # since_last_run: receipts without a readable timestamp_added, read all the same
    items_read: int
    requests: int
    skipped: Counter = field(default_factory=Counter)
    skipped_keys: list[str] = field(default_factory=list)
    receipt_added: dict[str, str] = field(default_factory=dict)
    clamped_words: int = 0  # words whose box overhung the receipt, kept with the box clamped into it

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def table_receipts(client, table: str, tally: _Tally) -> dict[ReceiptKey, str | None]:
    """Every receipt of the table and its ``timestamp_added`` (None when it has no string one), through the
    GSITYPE index: the receipts alone, not the words and labels that share their partitions."""
    receipts: dict[ReceiptKey, str | None] = {}
    names = {"#type": "TYPE", "#pk": "PK", "#sk": "SK", "#added": "timestamp_added"}
    for item in _pages(
        client,
        "query",
        tally,
        TableName=table,
        IndexName="GSITYPE",
        KeyConditionExpression="#type = :receipt",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues={":receipt": {"S": RECEIPT}},
        ProjectionExpression="#pk, #sk, #added",
    ):
        key = receipt_key_of(item)
        if key is not None:
            stamp = item.get("timestamp_added")
            receipts[key] = stamp if isinstance(stamp, str) else None
    return receipts


def receipts_with_valid_labels(client, table: str, tally: _Tally) -> set[ReceiptKey]:
    """Receipts holding at least one VALID label, from the GSI3 validation-status index (keys only)."""
    found = set()
    for item in _labels_with_status(client, table, SNAPSHOT_STATUS, tally, "PK", "SK"):
        key = word_key_of(item)
        if key is not None:
            found.add(key[:2])
    return found


def _receipt_items(client, table: str, receipt: ReceiptKey, tally: _Tally) -> list[dict[str, Any]]:
    """One receipt's words and labels: its key range of the image partition, filtered on the server."""
    image_id, receipt_id = receipt
    return list(
        _pages(
            client,
            "query",
            tally,
            TableName=table,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :receipt)",
            FilterExpression="#type IN (:word, :label)",
            ExpressionAttributeNames={"#type": "TYPE"},
            ExpressionAttributeValues={
                ":pk": {"S": image_pk(image_id)},
                ":receipt": {"S": f"{receipt_sk(receipt_id)}#"},  # not RECEIPT#00010 for receipt 1
                ":word": {"S": RECEIPT_WORD},
                ":label": {"S": RECEIPT_WORD_LABEL},
            },
        )
    )


def _prediction_partial(items: Iterable[Mapping[str, Any]]) -> _Partial:
    """The words of one receipt with their VALID labels; a bad item is skipped and counted, as in :func:`assemble`."""
    partial = _Partial()
    words: dict[WordKey, Word] = {}
    valid: dict[WordKey, set[str]] = defaultdict(set)
    seen: set[str] = set()
    for item in items:
        partial.considered += 1
        identity = item_key(item)
        if identity in seen:
            partial.skip("duplicate_item", identity, "the same key was read twice")
            continue
        seen.add(identity)
        try:
            if _item_type(item) == RECEIPT_WORD:
                word = parse_word(item)
                words[word.key] = word
            else:
                label = parse_label(item)
                if label.validation_status == SNAPSHOT_STATUS:
                    valid[label.key].add(label.label)
        except BadItem as error:
            partial.skip(error.reason, error.key, error.detail)
    columns = partial.columns
    for key in sorted(words):
        word = words[key]
        partial.receipts.add(key[:2])
        partial.clamped += word.clamped
        _append_word(columns, key, word, valid.get(key, ()), None)
    return partial


def read_receipts_to_predict(
    table: str,
    scope: PredictionScope = "unlabelled",
    *,
    since: str | None = None,
    receipts: Sequence[ReceiptKey] | None = None,
    client=None,
    read_parallelism: int = 8,
    max_bad_share: float = 0.05,
) -> PredictionRead:
    """The words of the receipts ``scope`` chooses (or of ``receipts``, when given), each receipt read by one
    query of its own key range, in parallel.

    The receipts are listed through the GSITYPE index; ``unlabelled`` leaves out those the GSI3 index shows
    with a VALID label, ``since_last_run`` those whose ``timestamp_added`` is not after ``since`` less
    SINCE_OVERLAP_SECONDS (all of them when ``since`` is None; a receipt whose time cannot be read is kept and
    counted). A receipt without a
    usable word is named, not predicted. Fails like :func:`read_receipt_words` when bad items pass
    ``max_bad_share`` of the items read; an empty choice is no error.
    """
    if scope not in PREDICTION_SCOPES:
        raise ValueError(f"unknown prediction scope {scope!r}: expected one of {', '.join(PREDICTION_SCOPES)}")
    started_at = dt.datetime.now(dt.UTC).isoformat()
    client = client or aws.client("dynamodb", max_pool_connections=max(10, read_parallelism * 2))
    tally = _Tally()
    undated = 0
    if receipts is not None:
        chosen = sorted(set(receipts))
        listed: dict[ReceiptKey, str | None] = dict.fromkeys(chosen)
    else:
        listed = table_receipts(client, table, tally)
        chosen = sorted(listed)
        if scope == "unlabelled":
            labelled = receipts_with_valid_labels(client, table, tally)
            chosen = [key for key in chosen if key not in labelled]
        elif scope == "since_last_run" and since is not None:
            after = _sortable(since) - SINCE_OVERLAP_SECONDS
            times = {key: _sortable(listed[key]) for key in chosen}
            # a receipt that cannot be dated is read every time rather than never
            undated = sum(1 for moment in times.values() if moment == float("-inf"))
            chosen = [key for key in chosen if times[key] == float("-inf") or times[key] > after]

    def read(receipt: ReceiptKey) -> _Partial:
        return _prediction_partial(_receipt_items(client, table, receipt, tally))

    with ThreadPoolExecutor(max_workers=read_parallelism, thread_name_prefix="dynamo-predict-read") as pool:
        partials = list(pool.map(read, chosen))
    columns = {name: [value for p in partials for value in p.columns[name]] for name in word_table.COLUMNS}
    skipped = sum((p.skipped for p in partials), Counter())
    considered = sum(p.considered for p in partials)
    read_receipts = set().union(*(p.receipts for p in partials)) if partials else set()
    result = PredictionRead(
        frame=word_table.to_frame(columns),
        table=table,
        scope="receipts" if receipts is not None else scope,
        started_at=started_at,
        receipts_in_table=len(listed),
        receipts_chosen=len(chosen),
        receipts=len(read_receipts),
        receipts_without_words=[
            word_table.receipt_key(word_table.SOURCE_DYNAMO, *key) for key in chosen if key not in read_receipts
        ],
        undated_receipts=undated,
        items_read=tally.items,
        requests=tally.requests,
        skipped=skipped,
        skipped_keys=[key for p in partials for key in p.skipped_keys][:MAX_LISTED_BAD_KEYS],
        receipt_added={
            word_table.receipt_key(word_table.SOURCE_DYNAMO, *key): stamp
            for key in sorted(read_receipts)
            if (stamp := listed.get(key))
        },
        clamped_words=sum(p.clamped for p in partials),
    )
    bad_share = result.skipped_total / max(1, considered)
    if bad_share > max_bad_share:
        raise ReceiptReadError(
            f"table {table!r}: {result.skipped_total} of {considered} items of the receipts to predict on are bad "
            f"({bad_share:.1%} > the {max_bad_share:.1%} threshold): {dict(skipped)}; "
            f"the bad items: {'; '.join(result.skipped_keys)}"
        )
    return result
