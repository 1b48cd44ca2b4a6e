"""Predicted labels written back to the users' table as label proposals, for people to review.

A proposal is a word label in exactly the shape the users' own writer gives one (``core/dynamo_items.py``;
``../shared/docs/dynamo-schema.md``): the label in the keys only, every index attribute,
``validation_status`` PENDING, ``label_proposed_by`` ``receipt_pipeline:<model version>`` and the confidence
in ``reasoning``. PENDING is not VALID, so nothing trains on a proposal until someone validates it.

Each is a conditional PutItem on ``attribute_not_exists(PK)``. The label is part of the sort key, so that one
condition both refuses to overwrite (or re-status) any label already on the word under that name, a human's
included, and refuses a second proposal of the same label for the same word: a re-run writes nothing, and
a label someone wrote meanwhile wins. A refused condition is counted as ``already_labelled``, not as an error.

Throttling is retried twice over: botocore's adaptive retry mode first, then an explicit, jittered
exponential backoff once botocore has given up. A proposal that still cannot be written is counted and named
in the result (``failed``), never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from receipt_pipeline.core import aws, dynamo_items
from receipt_pipeline.core.dynamo_schema import LABEL_VOCABULARY, WordKey, item_key

PROPOSER = "receipt_pipeline"
PROPOSED_STATUS = "PENDING"
CONDITION = "attribute_not_exists(PK)"
CONDITION_FAILED = "ConditionalCheckFailedException"
# what DynamoDB answers when it sheds load: worth waiting for, unlike every other error
THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
MAX_LISTED_FAILURES = 50


@dataclass(frozen=True)
class Proposal:
    key: WordKey  # (image_id, receipt_id, line_id, word_id)
    label: str
    confidence: float


def proposed_by(model_version: str) -> str:
    return f"{PROPOSER}:{model_version}"


def choose(words: pd.DataFrame, min_confidence: float) -> tuple[list[Proposal], Counter]:
    """The proposals among predicted words (``inference.WORD_COLUMNS``) and, by reason, the labelled words left
    out: ``below_min_confidence``, ``not_in_vocabulary`` (a label the users' table does not use, e.g. a merge
    such as AMOUNT), ``word_has_valid_label`` (a person decided this word already)."""
    proposals: list[Proposal] = []
    left_out: Counter = Counter()
    if not len(words):
        return proposals, left_out
    labelled = words.loc[words["label"].notna() & (words["source"] == "dynamo")]
    for word in labelled.itertuples(index=False):
        confidence = float(word.confidence)
        if word.label not in LABEL_VOCABULARY:
            left_out["not_in_vocabulary"] += 1
        elif len(word.existing_labels):
            left_out["word_has_valid_label"] += 1
        elif np.isnan(confidence) or confidence < min_confidence:
            left_out["below_min_confidence"] += 1
        else:
            key = (str(word.image_id), int(word.receipt_id), int(word.line_id), int(word.word_id))
            proposals.append(Proposal(key, str(word.label), confidence))
    return proposals, left_out


def proposal_item(proposal: Proposal, model_version: str, timestamp: str) -> dict:
    """The word label item of a proposal, as the users' writer shapes one."""
    return dynamo_items.label_item(
        *proposal.key,
        proposal.label,
        validation_status=PROPOSED_STATUS,
        timestamp_added=timestamp,
        reasoning=f"predicted by the receipt_pipeline model {model_version} with confidence {proposal.confidence:.3f}",
        label_proposed_by=proposed_by(model_version),
        label_consolidated_from=None,
    )


@dataclass
class WriteResult:
    proposed: int = 0  # proposals tried
    written: int = 0
    already_labelled: int = 0  # the word carries this label already (anyone's, any status): left as it is
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # "PK|SK: reason", the first MAX_LISTED_FAILURES
    failures_by_reason: Counter = field(default_factory=Counter)
    backoff_retries: int = 0  # throttled writes retried here, after botocore's own retries gave up
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "proposed": self.proposed,
            "written": self.written,
            "already_labelled": self.already_labelled,
            "failed": self.failed,
            "failures": list(self.failures),
            "failures_by_reason": dict(self.failures_by_reason),
            "backoff_retries": self.backoff_retries,
            "seconds": self.seconds,
        }


class _Outcomes:
    def __init__(self, result: WriteResult) -> None:
        self._lock = threading.Lock()
        self.result = result

    def add(self, outcome: str, key: str = "", reason: str = "", retries: int = 0) -> None:
        with self._lock:
            self.result.backoff_retries += retries
            if outcome == "written":
                self.result.written += 1
            elif outcome == "already_labelled":
                self.result.already_labelled += 1
            else:
                self.result.failed += 1
                self.result.failures_by_reason[reason.split(":")[0]] += 1
                if len(self.result.failures) < MAX_LISTED_FAILURES:
                    self.result.failures.append(f"{key}: {reason}")


def write_proposals(
    table: str,
    proposals: Sequence[Proposal],
    model_version: str,
    *,
    client=None,
    parallelism: int = 8,
    backoff_attempts: int = 6,
    backoff_base_seconds: float = 0.1,
    timestamp: str | None = None,
) -> WriteResult:
    """Write each proposal with a conditional PutItem (see the module docstring), ``parallelism`` at a time."""
    started = time.perf_counter()
    client = client or aws.client("dynamodb", max_pool_connections=max(10, parallelism * 2))
    stamp = timestamp or dt.datetime.now(dt.UTC).isoformat()
    result = WriteResult(proposed=len(proposals))
    outcomes = _Outcomes(result)
    serialise = TypeSerializer().serialize
    rng = random.Random()

    def put(proposal: Proposal) -> None:
        item = proposal_item(proposal, model_version, stamp)
        where = item_key(item)
        request = {
            "TableName": table,
            "Item": {name: serialise(value) for name, value in item.items()},
            "ConditionExpression": CONDITION,
        }
        retries = 0
        while True:
            try:
                client.put_item(**request)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code == CONDITION_FAILED:
                    outcomes.add("already_labelled", retries=retries)
                    return
                if code in THROTTLING_CODES and retries < backoff_attempts:
                    retries += 1
                    time.sleep(backoff_base_seconds * 2 ** (retries - 1) * (0.5 + rng.random()))
                    continue
                message = error.response.get("Error", {}).get("Message", "")
                tried = f" after {retries} more tries here" if retries else ""
                outcomes.add("failed", where, f"{code}: {message}{tried}", retries)
                return
            except BotoCoreError as error:  # the connection, not DynamoDB: no answer to go by
                outcomes.add("failed", where, f"{type(error).__name__}: {error}", retries)
                return
            outcomes.add("written", retries=retries)
            return

    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="label-proposals") as pool:
        list(pool.map(put, proposals))
    result.seconds = time.perf_counter() - started
    return result
