"""The receipt-level BIO split and the windowed tensors built from it."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import Field

from receipt_pipeline.core import bio, storage, word_table
from receipt_pipeline.core.base_model import load_tokenizer, tokenizer_fingerprint
from receipt_pipeline.core.batching import padding_efficiency
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline.core.windows import WindowOptions, folder_name, write_windows
from receipt_pipeline.defs.resources import PipelineSettings

GROUP = "training_data"

CHECK_NO_LEAK = "no_receipt_in_two_splits"
CHECK_NO_EMPTY_SPLIT = "no_split_empty"
CHECK_LABELS_IN_TRAIN = "validation_labels_seen_in_train"
CHECK_BOXES = "boxes_inside_page"
CHECK_NO_WORD_CUT = "no_word_cut_by_a_window"


class BioReceiptSplitConfig(dg.Config):
    sources: list[str] = Field(
        default=[word_table.SOURCE_DYNAMO, word_table.SOURCE_SROIE],
        description="Sources to combine: 'dynamo' (raw_receipt_words) and/or 'sroie' (sroie_receipts).",
    )
    strategy: bio.Strategy = Field(
        default=bio.SplitOptions.strategy,
        description="random: a hash of each receipt key; merchant: whole merchants held out of train (validation "
        "and test get their own); recent: the newest table receipts (timestamp_added) to test, then validation. "
        "SROIE's own test receipts stay in test, and pinned keys override, under every strategy.",
    )
    seed: int = Field(default=42, description="Seed of the split hash, the merchant order and the down-sampling.")
    train_share: float = Field(default=0.8, ge=0, le=1)
    validation_share: float = Field(default=0.1, ge=0, le=1)
    test_share: float = Field(default=0.1, ge=0, le=1)
    pinned_validation_keys: list[str] = Field(
        default=[], description="Receipt keys (<source>/<image id>/<receipt id>) always put in validation."
    )
    pinned_validation_file: str | None = Field(
        default=None, description="A local file or s3:// object of receipt keys, one per line, put in validation."
    )
    pinned_test_keys: list[str] = Field(
        default=[], description="Receipt keys always put in test: a frozen test set that models are compared on."
    )
    pinned_test_file: str | None = Field(
        default=None, description="A local file or s3:// object of receipt keys, one per line, put in test."
    )
    entity_share_target: float = Field(
        default=bio.SplitOptions.entity_share_target,
        ge=0,
        lt=1,
        description="Drop all-O train lines until entities make this share (the earlier system's 0.7); 0: off.",
    )
    sroie_labels: dict[str, str] = Field(
        default=dict(bio.DEFAULT_SROIE_LABELS), description="SROIE field labels renamed to the table's labels."
    )


def _markdown_label_table(counts: dict[str, dict[str, int]]) -> str:
    labels = sorted(set().union(*(c.keys() for c in counts.values())))
    header = "| label | " + " | ".join(counts) + " |\n|---|" + "---:|" * len(counts) + "\n"
    rows = "\n".join(
        f"| {label} | " + " | ".join(str(c.get(label, 0)) for c in counts.values()) + " |" for label in labels
    )
    return header + rows


@dg.asset(
    group_name=GROUP,
    code_version="2",
    kinds={"pyarrow"},
    description="One row per receipt: words in reading order, 0..1000 boxes, BIO tags, and its split.",
    check_specs=[
        dg.AssetCheckSpec(CHECK_NO_LEAK, asset="bio_receipt_split", blocking=True),
        dg.AssetCheckSpec(CHECK_NO_EMPTY_SPLIT, asset="bio_receipt_split", blocking=True),
        dg.AssetCheckSpec(CHECK_LABELS_IN_TRAIN, asset="bio_receipt_split", blocking=True),
        dg.AssetCheckSpec(CHECK_BOXES, asset="bio_receipt_split", blocking=True),
    ],
)
def bio_receipt_split(
    context: dg.AssetExecutionContext,
    config: BioReceiptSplitConfig,
    raw_receipt_words: storage.ParquetArtifact,
    sroie_receipts: storage.ParquetArtifact,
) -> Iterator:
    unknown = set(config.sources) - {word_table.SOURCE_DYNAMO, word_table.SOURCE_SROIE}
    if unknown or not config.sources:
        raise dg.Failure(f"sources must be a non-empty subset of ['dynamo', 'sroie'], got {config.sources}")
    # only the sources asked for are read: SROIE alone trains without a table, the table alone without SROIE
    by_source = {
        word_table.SOURCE_DYNAMO: ("raw_receipt_words", raw_receipt_words),
        word_table.SOURCE_SROIE: ("sroie_receipts", sroie_receipts),
    }
    words = [_source_words(name, *by_source[name]) for name in config.sources]
    pinned = _pinned(config.pinned_validation_keys, config.pinned_validation_file)
    pinned_test = _pinned(config.pinned_test_keys, config.pinned_test_file)
    try:
        options = bio.SplitOptions(
            strategy=config.strategy,
            seed=config.seed,
            shares=(config.train_share, config.validation_share, config.test_share),
            pinned_validation=pinned,
            pinned_test=pinned_test,
            entity_share_target=config.entity_share_target,
            sroie_labels=config.sroie_labels,
        )
    except bio.SplitError as error:
        raise dg.Failure(str(error)) from None
    result = bio.build_split(words, options)
    if result.pinned_missing:
        context.log.warning(f"{len(result.pinned_missing)} pinned keys match no receipt")
    table = result.table
    record = result.record
    label_counts = {split: dict(counts) for split, counts in result.label_counts_per_split().items()}
    yield dg.Output(
        table,
        data_version=dg.DataVersion(result.data_version),
        metadata={
            "strategy": record["strategy"],
            "receipts_per_split": dg.MetadataValue.json(result.receipts_per_split()),
            "merchants_per_split": dg.MetadataValue.json(record["merchants"]),
            "test_merchants_seen_in_train": record["test_merchants_seen_in_train"],
            "test_keys_sha256": record["keys_sha256"]["test"],
            "receipts_without_added_at": record["receipts_without_added_at"],
            "recent_since": record["recent_since"] or "",
            "split_record": dg.MetadataValue.json(record),
            "words_per_split": dg.MetadataValue.json(result.words_per_split()),
            "entities_per_label_and_split": dg.MetadataValue.md(_markdown_label_table(label_counts)),
            "labels": dg.MetadataValue.json(result.labels),
            "entity_share_before_downsampling": result.entity_share_before,
            "entity_share_after_downsampling": result.entity_share_after,
            "dropped_train_lines": result.dropped_train_lines,
            "dropped_train_words": result.dropped_train_words,
            "pinned_validation_keys": len(pinned),
            "pinned_test_keys": len(pinned_test),
            "pinned_keys_missing": dg.MetadataValue.json(result.pinned_missing[:20]),
            "content_hash": result.data_version,
            "dagster/row_count": table.num_rows,
        },
    )
    yield from split_checks(table)


def _pinned(keys: list[str], uri: str | None) -> frozenset[str]:
    return frozenset([*keys, *(bio.read_pinned_keys(uri) if uri else [])])


def _source_words(source: str, asset: str, artifact: storage.ParquetArtifact) -> pd.DataFrame:
    if not artifact.exists():
        raise dg.Failure(
            f"sources includes {source!r}, but {asset} has not been materialised (nothing at {artifact.uri}): "
            f"materialise {asset} first, or leave {source!r} out of bio_receipt_split's sources"
        )
    return artifact.read_pandas()


def split_checks(table: pa.Table) -> Iterator[dg.AssetCheckResult]:
    leaks = bio.receipts_in_two_splits(table)
    yield dg.AssetCheckResult(
        check_name=CHECK_NO_LEAK,
        passed=not leaks,
        metadata={"receipts_in_two_splits": len(leaks), "first_keys": dg.MetadataValue.json(leaks[:20])},
    )
    empty = bio.empty_splits(table)
    yield dg.AssetCheckResult(
        check_name=CHECK_NO_EMPTY_SPLIT, passed=not empty, metadata={"empty_splits": dg.MetadataValue.json(empty)}
    )
    unseen = bio.labels_unseen_in_train(table)
    yield dg.AssetCheckResult(
        check_name=CHECK_LABELS_IN_TRAIN,
        passed=not unseen,
        metadata={"validation_labels_not_in_train": dg.MetadataValue.json(unseen)},
    )
    bad_boxes = bio.boxes_out_of_range(table)
    yield dg.AssetCheckResult(
        check_name=CHECK_BOXES,
        passed=not bad_boxes,
        metadata={"first_bad_boxes": dg.MetadataValue.json(bad_boxes)},
    )


class WindowedTensorsConfig(dg.Config):
    base_model: str | None = Field(
        default=None,
        description="Whose tokenizer: a hub id, a local folder, an s3:// prefix or 'compact'; "
        "default: the deployment's base model.",
    )
    max_length: int = Field(default=512, ge=8, le=4096, description="Tokens per window, [CLS] and [SEP] included.")
    stride: int = Field(default=128, ge=0, description="Tokens shared by consecutive windows of a long receipt.")
    batch_receipts: int = Field(default=256, ge=1, description="Receipts per tokenizer call.")
    shard_windows: int = Field(default=4096, ge=1, description="Windows per safetensors shard.")


@dg.asset(
    group_name=GROUP,
    code_version="2",
    kinds={"safetensors"},
    description="Tokenised 512-token windows with 0..1000 boxes and first-sub-token labels, in safetensors "
    "shards per split; the stored value is the manifest that names them.",
    check_specs=[dg.AssetCheckSpec(CHECK_NO_WORD_CUT, asset="windowed_tensors", blocking=True)],
)
def windowed_tensors(
    context: dg.AssetExecutionContext,
    config: WindowedTensorsConfig,
    settings: PipelineSettings,
    bio_receipt_split: storage.ParquetArtifact,
) -> Iterator:
    source = config.base_model or settings.base_model
    options = WindowOptions(
        max_length=config.max_length,
        stride=config.stride,
        batch_receipts=config.batch_receipts,
        shard_windows=config.shard_windows,
    )
    tokenizer = load_tokenizer(source)
    fingerprint = tokenizer_fingerprint(tokenizer)
    columns = ["key", "split", "words", "boxes", "tags"]
    # one open: from S3 the split is downloaded once, for its metadata and its rows alike
    with bio_receipt_split.open() as parquet:
        schema_metadata = parquet.schema_arrow.metadata
        labels = bio.labels_of(schema_metadata)
        split_version = bio.version_of(schema_metadata)
        version = folder_name(split_version, fingerprint, options)
        folder = storage.join(settings.artifact_root, "windows", version)
        manifest, stats = write_windows(
            parquet.iter_batches(batch_size=options.batch_receipts, columns=columns),
            tokenizer,
            labels,
            folder,
            options,
            settings={
                "tokenizer": {"base_model": source, "fingerprint": fingerprint, "class": type(tokenizer).__name__},
                "split_content_hash": split_version,
                "source_snapshots": bio.source_snapshots_of(schema_metadata),
            },
        )
    words_cut = sum(s.words_cut for s in stats.values())
    if words_cut:
        context.log.warning(f"{words_cut} words longer than a window were cut")
    # as layoutlm_checkpoint batches them with no config: its sampler, its default batch for this base model
    batch_size = TrainingOptions(base_model=source).resolved().per_device_batch_size
    efficiency = padding_efficiency(stats["train"].lengths, batch_size, max_length=options.max_length)
    windows_per_receipt = {split: round(s.windows / s.receipts, 3) if s.receipts else 0.0 for split, s in stats.items()}
    context.log.info(f"windowed tensors in {folder}")
    yield dg.Output(
        manifest,
        data_version=dg.DataVersion(version),
        metadata={
            "folder": dg.MetadataValue.path(folder),
            "base_model": source,
            "windows_per_split": dg.MetadataValue.json({split: s.windows for split, s in stats.items()}),
            "tokens_per_split": dg.MetadataValue.json({split: s.tokens for split, s in stats.items()}),
            "windows": sum(s.windows for s in stats.values()),
            "tokens": sum(s.tokens for s in stats.values()),
            "windows_per_receipt": dg.MetadataValue.json(windows_per_receipt),
            "max_windows_per_receipt": max(max(s.windows_per_receipt, default=0) for s in stats.values()),
            "words_cut_by_windows": words_cut,
            "words_replaced_by_unk": sum(s.words_replaced_by_unk for s in stats.values()),
            "padding_efficiency/length_buckets": efficiency["length_buckets"],
            "padding_efficiency/padded_to_max_length": efficiency["padded_to_max"],
            "padding_efficiency/batch_size": batch_size,
            "max_length": options.max_length,
            "stride": options.stride,
        },
    )
    # a cut word would be labelled in one window and lose its context in the next
    yield dg.AssetCheckResult(check_name=CHECK_NO_WORD_CUT, passed=words_cut == 0, metadata={"words_cut": words_cut})
