"""The split and the windows materialised through Dagster on seeded emulator data and the shared SROIE folder."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pytest

from receipt_pipeline.core import bio, storage, word_table
from receipt_pipeline.core.batching import padding_efficiency
from receipt_pipeline.core.windows import WindowSet, merge_word_predictions
from receipt_pipeline.definitions import build_definitions
from receipt_pipeline.defs import ingestion, training_data
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata

ALL_ASSETS = [
    ingestion.raw_receipt_words,
    ingestion.sroie_receipts,
    training_data.bio_receipt_split,
    training_data.windowed_tensors,
]


@pytest.fixture(scope="module")
def seeded_table(aws_emulator):
    with seeded_receipts_table(receipts=40, seed=7) as name:
        yield name


@pytest.fixture(scope="module")
def materialised(seeded_table, shared_sroie_dir, module_tmp):
    """The four assets, materialised once for this module's tests."""
    tmp_path = module_tmp("training-data")
    settings = _local_settings(tmp_path, seeded_table, sroie_dir=str(shared_sroie_dir))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(ALL_ASSETS, resources=resources_for(settings), instance=instance)
    return result, settings, instance


def test_the_four_assets_materialise_with_passing_blocking_checks(materialised):
    result, settings, _ = materialised
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        training_data.CHECK_NO_LEAK: True,
        training_data.CHECK_NO_EMPTY_SPLIT: True,
        training_data.CHECK_LABELS_IN_TRAIN: True,
        training_data.CHECK_BOXES: True,
        training_data.CHECK_NO_WORD_CUT: True,
    }
    specs = {spec.name: spec.blocking for spec in training_data.bio_receipt_split.check_specs}
    assert specs and all(specs.values())


def test_the_split_metadata_describes_splits_labels_and_down_sampling(materialised):
    result, settings, _ = materialised
    metadata = _metadata(result, "bio_receipt_split")
    receipts = metadata["receipts_per_split"]
    assert set(receipts) == {"train", "validation", "test"} and min(receipts.values()) > 0
    # SROIE's 626 training receipts and the 36 labelled synthetic ones (10% carry no VALID label)
    assert sum(receipts.values()) == metadata["dagster/row_count"] > 626
    assert "| MERCHANT_NAME |" in metadata["entities_per_label_and_split"]
    assert metadata["labels"] == sorted(metadata["labels"]) and "GRAND_TOTAL" in metadata["labels"]
    # down-sampling is off by default (core/test_bio.py tests it on)
    assert metadata["entity_share_before_downsampling"] == metadata["entity_share_after_downsampling"] < 0.7
    assert metadata["dropped_train_words"] == 0

    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    assert isinstance(table, pa.Table)
    assert bio.labels_of(table.schema.metadata) == metadata["labels"]
    assert bio.version_of(table.schema.metadata) == metadata["content_hash"]
    [materialization] = result.asset_materializations_for_node("bio_receipt_split")
    assert materialization.tags["dagster/data_version"] == metadata["content_hash"]


def test_windowed_tensors_are_safetensors_shards_named_by_a_manifest(materialised):
    result, settings, _ = materialised
    metadata = _metadata(result, "windowed_tensors")
    assert metadata["words_cut_by_windows"] == 0
    assert metadata["padding_efficiency/length_buckets"] > metadata["padding_efficiency/padded_to_max_length"]
    assert metadata["padding_efficiency/batch_size"] == 4  # the compact model's default batch
    manifest = build_definitions(settings).load_asset_value("windowed_tensors")
    # the sampler that trains, over the train windows it will see
    lengths = WindowSet(manifest, "train").lengths
    assert metadata["padding_efficiency/length_buckets"] == padding_efficiency(lengths, 4)["length_buckets"]
    assert manifest["tokenizer"]["base_model"] == "compact"
    assert manifest["tags"][0] == "O" and len(manifest["tags"]) == 2 * len(manifest["labels"]) + 1
    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    for split in ("train", "validation", "test"):
        windows = WindowSet(manifest, split)
        assert len(windows) == metadata["windows_per_split"][split]
        assert windows.bbox.min() >= 0 and windows.bbox.max() <= 1000
        rows = table.filter(pa.compute.equal(table.column("split"), split))
        # each receipt's words come back exactly once, with their tags, when the windows merge
        truth = {
            key: tags for key, tags in zip(rows.column("key").to_pylist(), rows.column("tags").to_pylist(), strict=True)
        }
        merged = merge_word_predictions(windows, [windows[i]["labels"] for i in range(len(windows))])
        assert set(merged) == set(truth)
        for key, tag_ids in merged.items():
            assert [manifest["tags"][i] for i in tag_ids] == truth[key]
    for shard in manifest["splits"]["train"]["shards"]:
        assert storage.exists(storage.join(manifest["folder"], shard["file"]))


def test_the_windowed_tensors_are_stable_across_materialisations(materialised):
    result, settings, instance = materialised
    again = dg.materialize(
        ALL_ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["bio_receipt_split", "windowed_tensors"],
    )
    assert again.success
    for key in ("bio_receipt_split", "windowed_tensors"):
        [first] = result.asset_materializations_for_node(key)
        [second] = again.asset_materializations_for_node(key)
        assert first.tags["dagster/data_version"] == second.tags["dagster/data_version"]


def test_a_planted_leak_fails_the_blocking_check_and_stops_the_windows(materialised, monkeypatch):
    _, settings, instance = materialised
    build = bio.build_split

    def leaky_split(words, options=None):
        result = build(words, options)
        row = result.table.filter(pa.compute.equal(result.table.column("split"), "train")).slice(0, 1)
        leaked = row.set_column(row.schema.get_field_index("split"), "split", pa.array(["test"]))
        result.table = pa.concat_tables([result.table, leaked])
        return result

    monkeypatch.setattr(bio, "build_split", leaky_split)
    result = dg.materialize(
        ALL_ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["bio_receipt_split", "windowed_tensors"],
        raise_on_error=False,
    )
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks[training_data.CHECK_NO_LEAK].passed
    assert checks[training_data.CHECK_NO_LEAK].metadata["receipts_in_two_splits"].value == 1
    assert not result.asset_materializations_for_node("windowed_tensors")


def _rematerialise_split(settings, instance, split_config: dict):
    """bio_receipt_split again, alone, with this config, against the upstream already materialised."""
    return dg.materialize(
        ALL_ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["bio_receipt_split"],
        run_config={"ops": {"bio_receipt_split": {"config": split_config}}},
    )


def test_pinned_validation_keys_from_a_file_override_the_hash(materialised, tmp_path):
    result, settings, instance = materialised
    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    train_keys = table.filter(pa.compute.equal(table.column("split"), "train")).column("key").to_pylist()[:3]
    pinned = tmp_path / "validation-keys.txt"
    pinned.write_text("# pinned by the labelling team\n" + "\n".join(train_keys) + "\nnot/a/receipt\n")
    again = _rematerialise_split(settings, instance, {"pinned_validation_file": str(pinned)})
    metadata = _metadata(again, "bio_receipt_split")
    assert metadata["pinned_validation_keys"] == 4
    assert metadata["pinned_keys_missing"] == ["not/a/receipt"]
    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    split_of = dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist(), strict=True))
    assert all(split_of[key] == "validation" for key in train_keys)


def test_sroie_alone_is_a_valid_training_set(materialised):
    _, settings, instance = materialised
    result = _rematerialise_split(settings, instance, {"sources": ["sroie"]})
    metadata = _metadata(result, "bio_receipt_split")
    assert min(metadata["receipts_per_split"].values()) > 0
    assert metadata["labels"] == ["ADDRESS_LINE", "DATE", "GRAND_TOTAL", "MERCHANT_NAME"]
    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    assert {key.split("/")[0] for key in table.column("key").to_pylist()} == {"sroie"}


@pytest.mark.parametrize("strategy", ["merchant", "recent"])
def test_a_strategy_and_pinned_test_keys_from_a_file_are_recorded_with_the_split(materialised, tmp_path, strategy):
    _, settings, instance = materialised
    words = build_definitions(settings).load_asset_value("raw_receipt_words")
    receipts = words[["image_id", "receipt_id"]].drop_duplicates().itertuples(index=False)
    dynamo = sorted(word_table.receipt_key(word_table.SOURCE_DYNAMO, *receipt) for receipt in receipts)
    pinned = tmp_path / "test-keys.txt"
    pinned.write_text("\n".join(dynamo[:4]) + "\n")
    again = _rematerialise_split(settings, instance, {"strategy": strategy, "pinned_test_file": str(pinned)})
    metadata = _metadata(again, "bio_receipt_split")
    assert metadata["strategy"] == strategy and metadata["pinned_test_keys"] == 4
    table = build_definitions(settings).load_asset_value("bio_receipt_split")
    split_of = dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist(), strict=True))
    assert all(split_of[key] == "test" for key in dynamo[:4])
    record = bio.record_of(table.schema.metadata)
    assert record == metadata["split_record"] and record["strategy"] == strategy
    assert metadata["test_keys_sha256"] == bio.keys_digest(k for k, s in split_of.items() if s == "test")
    assert metadata["receipts_without_added_at"] == sum(k.startswith("sroie/") for k in split_of), (
        "the table's are dated"
    )
    if strategy == "merchant":
        # pinned receipts aside, no test merchant is a train merchant
        merchant = dict(zip(table.column("key").to_pylist(), table.column("merchant").to_pylist(), strict=True))
        train = {merchant[k] for k, s in split_of.items() if s == "train"}
        held_out = {
            merchant[k] for k, s in split_of.items() if s == "test" and k not in dynamo[:4] and k.startswith("dynamo/")
        }
        assert not (train & held_out - {bio.UNKNOWN_MERCHANT})
