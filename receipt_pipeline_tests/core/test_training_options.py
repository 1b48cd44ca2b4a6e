"""Each training setting is declared once (core.training_options), reaches the Trainer, and is what the Dagster
config and layoutlm-cli offer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from receipt_pipeline.core import bio, training_options
from receipt_pipeline.core.box_augmentation import BoxAugmentation
from receipt_pipeline.core.training import build_trainer
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline_tests.training_data import build_manifest, synthetic_words

# a value other than the default for every setting, as a user would give it
CHOSEN = {
    "base_model": "compact",  # the one base model that ships offline; its weights are checked below
    "epochs": 3.5,
    "per_device_batch_size": 3,
    "gradient_accumulation_steps": 2,
    "learning_rate": 3.3e-4,
    "weight_decay": 0.07,
    "warmup_ratio": 0.15,
    "label_smoothing": 0.05,
    "tag_weight_power": 0.3,
    "tag_weight_cap": 4.0,
    "label_weights": {"DATE": 2.5},
    "selection_metric": "macro_f1:product_details",
    "max_grad_norm": 0.7,
    "early_stopping_patience": 5,
    "seed": 123,
    "auto_batch_size": True,
    "mixed_precision": False,
    "augment": True,
    "max_steps": 11,
    "eval_steps": 4,
    "max_train_minutes": 1.5,
    "group_by_length": False,
    "dataloader_workers": 3,
    "dropout": 0.2,
    "pad_to_length": 64,
}


@pytest.fixture(scope="module")
def manifest(module_tmp):
    folder = module_tmp("options") / "windows"
    return build_manifest([synthetic_words(16)], folder, bio.SplitOptions())[0]


def test_every_setting_reaches_the_trainer(manifest, tmp_path):
    import torch

    from receipt_pipeline.core.batching import tag_weights
    from receipt_pipeline.core.trainer import BudgetedLinearSchedule, SmoothedEarlyStopping, training_argument_values

    tags = manifest["tags"]
    date = [tags.index("B-DATE"), tags.index("I-DATE")]
    others = [i for i in range(len(tags)) if i not in date]

    assert set(CHOSEN) == {f.name for f in dataclasses.fields(TrainingOptions)}, "a setting the test does not set"
    options = TrainingOptions(**CHOSEN)
    assert all(CHOSEN[f.name] != f.default for f in dataclasses.fields(TrainingOptions) if f.name != "base_model")

    trainer, progress, tokenizer = build_trainer(manifest, tmp_path, options.resolved())
    args = trainer.args
    trainer.create_optimizer_and_scheduler(num_training_steps=11)
    schedule = trainer.lr_scheduler
    [early_stopping] = [c for c in trainer.callback_handler.callbacks if isinstance(c, SmoothedEarlyStopping)]
    dropouts = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)}
    weights = trainer.compute_loss_func.tag_weights
    computed = tag_weights(trainer.train_dataset.labels, tags, 0.3, 4)
    reached = {
        "base_model": trainer.model.config.hidden_size == 384 and tokenizer.vocab_size == 30522,
        "epochs": args.num_train_epochs == 3.5,
        "per_device_batch_size": (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 6),
        "gradient_accumulation_steps": args.gradient_accumulation_steps == 2,
        "learning_rate": args.learning_rate == 3.3e-4,
        "weight_decay": args.weight_decay == 0.07,
        "warmup_ratio": args.warmup_steps == 0.15 and schedule.warmup_ratio == 0.15,
        "label_smoothing": trainer.compute_loss_func.label_smoothing == 0.05,
        "tag_weight_power": (weights[others] == computed[others]).all(),
        "tag_weight_cap": weights.max() == 4.0,
        # the explicit weight replaces the computed one, on the label's B- and I- tags
        "label_weights": weights[date].tolist() == [2.5, 2.5] and computed[date].tolist() != [2.5, 2.5],
        # the group's macro F1 selects the offset, the checkpoint kept and when to stop
        "selection_metric": trainer.compute_metrics.selection_labels
        == ("PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL")
        and (args.metric_for_best_model, args.greater_is_better) == ("selection", True)
        and early_stopping.metric == "eval_selection",
        "max_grad_norm": args.max_grad_norm == 0.7,
        "early_stopping_patience": early_stopping.early_stopping_patience == 5,
        "seed": args.seed == 123 and trainer.sampler_seed == 123 and trainer.train_dataset.augment.seed == 123,
        "auto_batch_size": args.auto_find_batch_size is True,
        # float32 on this machine's CPU, and no float16 on a GPU without bfloat16 either
        "mixed_precision": not args.bf16
        and not args.fp16
        and not training_argument_values(options.resolved(gpu=True), tmp_path, cuda=True, bf16=False)["fp16"],
        "augment": isinstance(trainer.train_dataset.augment, BoxAugmentation),
        "max_steps": args.max_steps == 11,
        "eval_steps": (args.eval_steps, args.save_steps, args.eval_strategy.value) == (4, 4, "steps"),
        # the budget also lays out the learning rate's schedule
        "max_train_minutes": progress.max_train_seconds == 90 and isinstance(schedule, BudgetedLinearSchedule),
        "group_by_length": trainer.length_buckets is False,
        # loader workers are a CUDA setting: what a GPU gets, read here without one
        "dataloader_workers": args.dataloader_num_workers == 0
        and training_argument_values(options.resolved(gpu=True), tmp_path, cuda=True, bf16=True)[
            "dataloader_num_workers"
        ]
        == 3,
        "dropout": dropouts == {0.2},
        "pad_to_length": trainer.data_collator.pad_to_length == 64,
    }
    assert set(reached) == set(CHOSEN)
    assert [name for name, ok in reached.items() if not ok] == []


def test_the_dagster_configs_and_the_flags_are_the_settings_declared_once():
    from receipt_pipeline.defs.sweep import SweepTrialConfig
    from receipt_pipeline.defs.training import LayoutLMCheckpointConfig

    configurable = [name for name, (s, _, _) in training_options.settings().items() if s.configurable]
    checkpoint = LayoutLMCheckpointConfig.model_fields
    assert list(checkpoint)[: len(configurable)] == configurable
    assert set(checkpoint) - set(configurable) == {"run_name", "output_path", "processes", "use_best_hyperparameters"}
    for name in configurable:
        setting, _, default = training_options.settings()[name]
        field = checkpoint[name]
        assert field.description == setting.help
        assert field.default == (None if setting.deployment_default else default)
    searched = set(training_options.SEARCHED_BY_SWEEPS)
    trial = SweepTrialConfig.model_fields
    assert set(configurable) - searched <= set(trial)
    assert (trial["epochs"].default, trial["early_stopping_patience"].default) == (4, 2)  # a trial is shorter
    flags = {flag.name: flag.flag for flag in training_options.cli_settings()}
    assert list(flags) == configurable
    assert (flags["learning_rate"], flags["per_device_batch_size"], flags["base_model"]) == (
        "--lr",
        "--batch-size",
        "--pretrained",
    )  # the earlier tool's names
    assert flags["max_grad_norm"] == "--max-grad-norm"


def test_config_values_and_the_deployment_make_the_options():
    options = TrainingOptions.from_config(
        {"epochs": 2, "base_model": None, "max_train_minutes": None, "run_name": "r", "learning_rate": None},
        base_model="microsoft/layoutlm-base-uncased",
        max_train_minutes=2.5,
    )
    assert (options.base_model, options.max_train_minutes, options.epochs) == (
        "microsoft/layoutlm-base-uncased",
        2.5,
        2,
    )
    assert options.learning_rate is None and options.resolved().learning_rate == 5e-5
    assert TrainingOptions.from_config({"base_model": "compact"}, base_model="other").base_model == "compact"
    assert TrainingOptions(max_train_minutes=1.5).max_train_seconds == 90


def test_the_default_selection_is_the_overall_entity_f1_and_a_group_names_real_labels():
    from receipt_pipeline.core.dynamo_schema import LABEL_VOCABULARY
    from receipt_pipeline.core.trainer import SmoothedEarlyStopping, training_argument_values

    options = TrainingOptions()
    assert (options.selection_metric, options.selection_labels, options.label_weights) == ("entity_f1", None, None)
    assert (
        training_argument_values(options.resolved(), Path("run"), cuda=False, bf16=False)["metric_for_best_model"]
        == "selection"
    )
    assert SmoothedEarlyStopping(3).metric == "eval_selection"
    assert TrainingOptions(selection_metric="macro_f1:fields").selection_labels == (
        "MERCHANT_NAME",
        "DATE",
        "ADDRESS_LINE",
        "GRAND_TOTAL",
    )
    for name, labels in training_options.LABEL_GROUPS.items():
        assert labels and set(labels) <= set(LABEL_VOCABULARY), name


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("macro_f1:totals", "unknown label group 'totals'"),
        ("macro_f1", "unknown label group ''"),
        ("f1", "unknown metric"),
    ],
)
def test_an_unknown_selection_metric_is_refused_listing_the_groups(metric, message):
    with pytest.raises(training_options.TrainingOptionsError) as refused:
        TrainingOptions(selection_metric=metric)
    text = str(refused.value)
    assert message in text and repr(metric) in text
    assert "'entity_f1'" in text and "macro_f1:product_details (PRODUCT_NAME" in text and "macro_f1:fields" in text


def test_label_weights_must_be_positive_and_name_labels_the_model_has():
    assert TrainingOptions(label_weights={"DATE": 2, "TAX": "0.5"}).label_weights == {"DATE": 2.0, "TAX": 0.5}
    assert TrainingOptions(label_weights={}).label_weights is None
    with pytest.raises(training_options.TrainingOptionsError, match=r"positive numbers: DATE=0, TAX=-1.0, TIP='x'"):
        TrainingOptions(label_weights={"DATE": 0, "TAX": -1.0, "TIP": "x", "CHANGE": 1})
    with pytest.raises(training_options.TrainingOptionsError, match="positive numbers: DATE=nan"):
        TrainingOptions(label_weights={"DATE": float("nan")})

    labels = ["DATE", "GRAND_TOTAL", "PRODUCT_NAME", "LINE_TOTAL"]
    chosen = TrainingOptions(label_weights={"DATE": 2.0}, selection_metric="macro_f1:product_details")
    assert chosen.check_labels(labels) == ("PRODUCT_NAME", "LINE_TOTAL")  # the group's labels the model has
    assert TrainingOptions().check_labels(labels) is None
    with pytest.raises(training_options.TrainingOptionsError) as unknown:
        TrainingOptions(label_weights={"DATE": 2.0, "TOTAL": 3.0, "AMOUNT": 1.5}).check_labels(labels)
    assert "does not have: AMOUNT, TOTAL;" in str(unknown.value)
    assert "its labels: DATE, GRAND_TOTAL" in str(unknown.value)
    with pytest.raises(training_options.TrainingOptionsError) as absent:
        TrainingOptions(selection_metric="macro_f1:product_details").check_labels(["DATE", "GRAND_TOTAL"])
    assert "'macro_f1:product_details'" in str(absent.value)
    assert "PRODUCT_NAME, QUANTITY, UNIT_PRICE, LINE_TOTAL" in str(absent.value)
    assert "its labels: DATE, GRAND_TOTAL" in str(absent.value)


def test_both_settings_come_from_the_config_and_the_command_line():
    import click
    from click.testing import CliRunner

    from receipt_pipeline import layoutlm_cli
    from receipt_pipeline.defs.training import LayoutLMCheckpointConfig

    config = LayoutLMCheckpointConfig(label_weights={"DATE": 2.0}, selection_metric="macro_f1:fields")
    options = TrainingOptions.from_config(config.model_dump(), base_model="compact")
    assert (options.label_weights, options.selection_metric) == ({"DATE": 2.0}, "macro_f1:fields")
    assert LayoutLMCheckpointConfig().label_weights is None
    assert LayoutLMCheckpointConfig().selection_metric == "entity_f1"

    given = {}

    @click.command()
    @layoutlm_cli._training_flags()
    def command(**flags):
        given.update(layoutlm_cli._settings_given(flags))

    ran = CliRunner().invoke(command, ["--label-weights", "DATE=2, TAX=0.5", "--selection-metric", "macro_f1:fields"])
    assert ran.exit_code == 0, ran.output
    assert given == {"label_weights": {"DATE": 2.0, "TAX": 0.5}, "selection_metric": "macro_f1:fields"}
    refused = CliRunner().invoke(command, ["--selection-metric", "macro_f1:totals"])
    assert refused.exit_code == 2 and "unknown label group 'totals'" in refused.output
    refused = CliRunner().invoke(command, ["--label-weights", "DATE"])
    assert refused.exit_code == 2 and "expected LABEL=WEIGHT" in refused.output
    refused = CliRunner().invoke(command, ["--label-weights", "DATE=-1"])
    assert refused.exit_code == 2 and "positive numbers: DATE='-1'" in refused.output
