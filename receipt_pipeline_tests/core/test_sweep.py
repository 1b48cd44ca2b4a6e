"""The sweep's Optuna study: seeded asks from a database, retries, ties, the table and the plot."""

from __future__ import annotations

import pytest

from receipt_pipeline.core import sweep
from receipt_pipeline.core.training_options import TrainingOptions


def _url(tmp_path, name: str = "optuna") -> str:
    return f"sqlite:///{tmp_path / name}.sqlite"


def test_a_seeded_study_asks_the_same_settings_inside_the_space_and_survives_reopening(tmp_path):
    space = sweep.SearchSpace()
    first = sweep.open_study("s", _url(tmp_path, "a"), seed=7)
    second = sweep.open_study("s", _url(tmp_path, "b"), seed=7)
    asked = [sweep.ask(first, space, f"s-{i:03d}")[1] for i in range(3)]
    assert asked == [sweep.ask(second, space, f"s-{i:03d}")[1] for i in range(3)]
    for params in asked:
        assert 1e-5 <= params["learning_rate"] <= 5e-5 and 0 <= params["weight_decay"] <= 0.1
        assert 0 <= params["warmup_ratio"] <= 0.2 and 0 <= params["label_smoothing"] <= 0.1
        assert params["effective_batch_size"] in space.effective_batch_sizes and "max_grad_norm" not in params
    reopened = sweep.open_study("s", _url(tmp_path, "a"), seed=7)
    assert [t.partition for t in sweep.trials(reopened)] == ["s-000", "s-001", "s-002"]


def test_trials_asked_from_separate_runs_each_get_their_own_settings(tmp_path):
    # each trial's run opens the study anew, as a new process would
    space = sweep.SearchSpace()
    asked = [sweep.ask(sweep.open_study("s", _url(tmp_path), seed=7), space, f"s-{i:03d}")[1] for i in range(3)]
    assert len({params["learning_rate"] for params in asked}) == 3


def test_a_retried_partition_continues_its_trial_and_a_finished_one_is_not_trained_again(tmp_path):
    study = sweep.open_study("s", _url(tmp_path))
    space = sweep.SearchSpace(max_grad_norms=(0.0, 1.0))
    number, params = sweep.ask(study, space, "s-000")
    assert "max_grad_norm" in params
    assert sweep.ask(sweep.open_study("s", _url(tmp_path)), space, "s-000") == (number, params)
    assert sweep.finished_trial(study, "s-000") is None
    sweep.tell(study, number, validation_f1=0.5, epochs=3.0, checkpoint="/runs/a/best")
    done = sweep.finished_trial(study, "s-000")
    assert done is not None and (done.validation_f1, done.epochs, done.checkpoint) == (0.5, 3.0, "/runs/a/best")
    assert sweep.ask(study, space, "s-000")[0] != number, "a finished trial is not handed out again"


def test_later_trials_learn_from_finished_ones(tmp_path):
    # TPE starts sampling from the model after its startup trials: a study told that low rates score
    # well asks for lower rates than an untold one
    study = sweep.open_study("s", _url(tmp_path), seed=3)
    space = sweep.SearchSpace()
    for i in range(12):
        number, params = sweep.ask(study, space, f"s-{i:03d}")
        sweep.tell(study, number, validation_f1=1.0 - params["learning_rate"] * 1e4, epochs=3, checkpoint="")
    informed = [sweep.ask(study, space, f"s-{i:03d}")[1]["learning_rate"] for i in range(12, 20)]
    assert sorted(informed)[len(informed) // 2] < 2.2e-5, informed  # the space's log-midpoint


def test_the_best_trial_is_the_highest_f1_and_of_ties_the_fewer_epochs(tmp_path):
    study = sweep.open_study("s", _url(tmp_path))
    space = sweep.SearchSpace()
    for partition, f1, epochs in (("s-000", 0.7, 5.0), ("s-001", 0.8, 5.0), ("s-002", 0.8, 3.0), ("s-003", 0.1, 1)):
        number, _ = sweep.ask(study, space, partition)
        sweep.tell(study, number, validation_f1=f1, epochs=epochs, checkpoint=f"/runs/{partition}")
    number, _ = sweep.ask(study, space, "s-004")
    sweep.fail(study, number)
    all_trials = sweep.trials(study)
    assert sweep.best(all_trials).partition == "s-002"
    table = sweep.markdown_table(all_trials)
    assert table.count("\n") == 6 and "| FAIL |" in table and "learning_rate" in table
    assert sweep.f1_against_learning_rate_png(all_trials)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no completed trial"):
        sweep.best([t for t in all_trials if t.state == "FAIL"])


def test_a_study_ranks_by_the_metric_of_its_first_trial_and_refuses_another(tmp_path):
    study = sweep.open_study("s", _url(tmp_path))
    assert sweep.trials(study) == [] and sweep.markdown_table([]).startswith("| trial |")
    group = "macro_f1:product_details"
    assert sweep.rank_by(study, group) == group
    number, _ = sweep.ask(study, sweep.SearchSpace(), "s-000")
    sweep.tell(study, number, validation_f1=0.4, epochs=1.0, checkpoint="/runs/s-000")
    reopened = sweep.open_study("s", _url(tmp_path))
    assert sweep.rank_by(reopened, group) == group, "the same metric again is fine"
    with pytest.raises(sweep.SweepError, match="ranks its trials by 'macro_f1:product_details'.*'entity_f1'"):
        sweep.rank_by(reopened, "entity_f1")
    [trial] = sweep.trials(reopened)
    assert trial.metric == group
    assert f"validation {group}" in sweep.markdown_table([trial])


def test_a_trials_effective_batch_is_split_into_what_fits_and_accumulation():
    params = {
        "learning_rate": 3e-5,
        "weight_decay": 0.05,
        "warmup_ratio": 0.1,
        "label_smoothing": 0.02,
        "effective_batch_size": 32,
    }
    options = sweep.options_for(params, TrainingOptions(epochs=4), max_per_device_batch=8)
    assert (options.per_device_batch_size, options.gradient_accumulation_steps) == (8, 4)
    assert options.learning_rate == 3e-5 and options.label_smoothing == 0.02 and options.epochs == 4
    small = sweep.options_for({**params, "effective_batch_size": 8}, TrainingOptions(), max_per_device_batch=16)
    assert (small.per_device_batch_size, small.gradient_accumulation_steps) == (8, 1)


def test_without_a_configured_limit_a_gpu_takes_every_default_effective_batch_in_one_pass():
    params = {"learning_rate": 3e-5, "weight_decay": 0.0, "warmup_ratio": 0.0, "label_smoothing": 0.0}
    for effective in sweep.SearchSpace().effective_batch_sizes:
        on_gpu = sweep.options_for(
            {**params, "effective_batch_size": effective}, TrainingOptions(), sweep.default_max_per_device_batch(True)
        )
        assert (on_gpu.per_device_batch_size, on_gpu.gradient_accumulation_steps) == (effective, 1)
    on_cpu = sweep.options_for(
        {**params, "effective_batch_size": 32}, TrainingOptions(), sweep.default_max_per_device_batch(False)
    )
    assert (on_cpu.per_device_batch_size, on_cpu.gradient_accumulation_steps) == (8, 4)
