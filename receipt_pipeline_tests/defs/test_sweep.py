"""A sweep through Dagster: trials as partitions run one after another, the best picked, a retrain using it."""

from __future__ import annotations

import dagster as dg
import pytest

from receipt_pipeline.core import storage, sweep
from receipt_pipeline.defs import ingestion, training, training_data
from receipt_pipeline.defs import sweep as sweep_defs
from receipt_pipeline.defs.resources import resources_for
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.defs.test_ingestion import _local_settings, _metadata
from receipt_pipeline_tests.training_data import QUICK_SPLIT, sroie_subset

ASSETS = [
    ingestion.raw_receipt_words,
    ingestion.sroie_receipts,
    training_data.bio_receipt_split,
    training_data.windowed_tensors,
    training.layoutlm_checkpoint,
    sweep_defs.sweep_trial,
    sweep_defs.best_hyperparameters,
]
STUDY = "test"
# short trials; the compact model learns at rates above the default range (BENCHMARKS.md)
TRIAL = {"study": STUDY, "max_steps": 4, "eval_steps": 2, "learning_rate": [1e-4, 5e-4]}


@pytest.fixture(scope="module")
def windows(aws_emulator, shared_sroie_dir, module_tmp):
    root = module_tmp("sweep")
    with seeded_receipts_table(receipts=20, seed=4) as table:
        settings = _local_settings(root, table, sroie_dir=str(sroie_subset(shared_sroie_dir, root / "sroie", 30)))
        instance = dg.DagsterInstance.ephemeral()
        upstream = ["raw_receipt_words", "sroie_receipts", "bio_receipt_split", "windowed_tensors"]
        result = dg.materialize(
            ASSETS,
            resources=resources_for(settings),
            instance=instance,
            selection=upstream,
            run_config={"ops": QUICK_SPLIT},
        )
        assert result.success
        yield settings, instance


def _trial(settings, instance, partition: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["sweep_trial"],
        partition_key=partition,
        run_config={"ops": {"sweep_trial": {"config": TRIAL}}},
    )


def test_a_three_trial_sweep_picks_the_best_and_a_full_retrain_uses_it(windows):
    settings, instance = windows
    partitions = [sweep_defs.trial_partition(STUDY, i) for i in range(3)]
    instance.add_dynamic_partitions(sweep_defs.SWEEP_TRIALS.name, partitions)
    f1s = {}
    for partition in partitions:
        metadata = _metadata(_trial(settings, instance, partition), "sweep_trial")
        assert 0.0 <= metadata["validation_f1"] <= 1.0 and storage.exists(metadata["checkpoint"])
        assert metadata["selection_metric"] == "entity_f1", "ranked by the default selection metric"
        assert 1e-4 <= metadata["params"]["learning_rate"] <= 5e-4
        f1s[partition] = (metadata["validation_f1"], metadata["epochs"], metadata["trial"])
    study = sweep.open_study(STUDY, settings.optuna_storage)
    assert [t.state for t in sweep.trials(study)] == ["COMPLETE"] * 3
    assert len({str(t.params) for t in sweep.trials(study)}) == 3

    [first] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("sweep_trial"), asset_partitions=[partitions[0]]), limit=1
    ).records
    assert first.asset_materialization.tags["dagster/data_version"] == f"{STUDY}:{f1s[partitions[0]][2]}"
    again = _metadata(_trial(settings, instance, partitions[0]), "sweep_trial")
    assert again["trial"] == f1s[partitions[0]][2] and len(sweep.trials(study)) == 3, "a finished trial is kept"

    best = dg.materialize(
        ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["best_hyperparameters"],
        run_config={"ops": {"best_hyperparameters": {"config": {"study": STUDY}}}},
    )
    chosen = _metadata(best, "best_hyperparameters")
    expected = max(f1s.items(), key=lambda item: (item[1][0], -item[1][1], -item[1][2]))[0]
    assert chosen["partition"] == expected and chosen["completed_trials"] == 3
    assert chosen["selection_metric"] == "entity_f1"
    assert chosen["all_trials"].count(f"| {STUDY}-") == 3
    assert storage.read_bytes(chosen["f1_against_learning_rate"])[:4] == b"\x89PNG"

    retrain = dg.materialize(
        ASSETS,
        resources=resources_for(settings),
        instance=instance,
        selection=["layoutlm_checkpoint"],
        run_config={"ops": {"layoutlm_checkpoint": {"config": {"use_best_hyperparameters": True, "max_steps": 4}}}},
    )
    checkpoint = _metadata(retrain, "layoutlm_checkpoint")
    assert checkpoint["hyperparameters"]["learning_rate"] == pytest.approx(chosen["params"]["learning_rate"])
    assert checkpoint["hyperparameters"]["weight_decay"] == pytest.approx(chosen["params"]["weight_decay"])
    assert checkpoint["sweep_trial"].endswith(f"({expected})")
