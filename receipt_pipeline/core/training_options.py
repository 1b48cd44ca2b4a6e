"""Every training setting, declared once: its type, default, bounds, help and command-line flag.

``TrainingOptions`` is the one schema. The Dagster config of ``layoutlm_checkpoint`` and of ``sweep_trial``
(:func:`config_fields`) and the flags of ``layoutlm-cli`` (:func:`cli_settings`) are derived from it, so a
new setting is added here and nowhere else. Defaults that depend on the base model or the device are
resolved once, by :meth:`TrainingOptions.resolved`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from receipt_pipeline.core import base_model
from receipt_pipeline.core.errors import ExplainedError

# Defaults follow the base model. LayoutLM-base keeps the earlier system's settings. The compact model
# wants a higher rate and more, smaller steps: on SROIE at the same epochs, batch 8 x 4 at 1e-4 scored
# field F1 0.60 and 4 x 1 at 2e-4 scored 0.85; batch 4 is also faster on CPU (BENCHMARKS.md).
BASE_DEFAULTS = {"per_device_batch_size": 8, "gradient_accumulation_steps": 4, "learning_rate": 5e-5}
DEFAULTS_BY_BASE_MODEL = {
    base_model.COMPACT: {"per_device_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-4},
}


# the settings a sweep trial draws from its study (core.sweep.SearchSpace: the effective batch is split into
# batch x accumulation); every other setting a trial takes from its config
SEARCHED_BY_SWEEPS = ("learning_rate", "weight_decay", "warmup_ratio", "label_smoothing", "per_device_batch_size",
                      "gradient_accumulation_steps", "max_grad_norm")  # fmt: skip


# The label groups a model can be selected on (``selection_metric`` "macro_f1:<group>"), by the names of
# core.dynamo_schema.LABEL_VOCABULARY: the line items, and the header and total fields SROIE also has
LABEL_GROUPS: dict[str, tuple[str, ...]] = {
    "product_details": ("PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL"),
    "fields": ("MERCHANT_NAME", "DATE", "ADDRESS_LINE", "GRAND_TOTAL"),
}
ENTITY_F1 = "entity_f1"
MACRO_F1 = "macro_f1"


class TrainingOptionsError(ExplainedError, ValueError):
    """A training setting that cannot be used; the message names the setting and what it accepts."""


def selection_group(metric: str) -> tuple[str, ...] | None:
    """The labels whose macro F1 ``metric`` selects on ("macro_f1:<group>"), or None for "entity_f1" (the
    overall micro entity F1); a :class:`TrainingOptionsError` listing what is accepted for anything else."""
    if metric == ENTITY_F1:
        return None
    kind, _, group = metric.partition(":")
    if kind == MACRO_F1 and group in LABEL_GROUPS:
        return LABEL_GROUPS[group]
    groups = ", ".join(f"{MACRO_F1}:{name} ({', '.join(labels)})" for name, labels in LABEL_GROUPS.items())
    what = f"unknown label group {group!r}" if kind == MACRO_F1 else "unknown metric"
    raise TrainingOptionsError(f"selection_metric {metric!r}: {what}; one of {ENTITY_F1!r}, {groups}")


def selection_metric_argument(text: str) -> str:
    """A ``selection_metric`` flag's value, refused (naming the groups) unless it is one."""
    selection_group(text)
    return text


def checked_label_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    """``label_weights`` as label -> float, None where none is given; a :class:`TrainingOptionsError` naming
    every weight that is not a positive, finite number."""
    if not weights:
        return None
    chosen, bad = {}, []
    for label, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            bad.append(f"{label}={weight!r}")
        chosen[str(label)] = value
    if bad:
        raise TrainingOptionsError(f"label_weights must be positive numbers: {', '.join(bad)}")
    return chosen


def label_weights_argument(text: str) -> dict[str, float]:
    """A ``label_weights`` flag's value, "LABEL=WEIGHT,LABEL=WEIGHT", as a mapping."""
    pairs = [part.strip() for part in text.split(",") if part.strip()]
    weights = {}
    for pair in pairs:
        label, equals, weight = pair.partition("=")
        if not equals or not label.strip():
            raise TrainingOptionsError(f"label_weights {text!r}: expected LABEL=WEIGHT,..., got {pair!r}")
        weights[label.strip()] = weight.strip()
    return checked_label_weights(weights) or {}


@dataclass(frozen=True)
class Setting:
    """What the config and the command line say of one setting."""

    help: str
    bounds: dict[str, float]  # pydantic's ge, gt, le, lt
    flag: str | None  # layoutlm-cli's flag (the earlier tool's name where it had one); None: not a flag
    configurable: bool  # in the Dagster config; False for settings only tests and benchmarks set
    # None in the config and on the command line means the deployment's value (its base model, its budget)
    deployment_default: bool
    parse: Callable[[str], Any] | None = None  # reads the flag's text where it is not a plain int, float or str


def _setting(
    default: Any,
    help: str,
    *,
    flag: str | None = "",
    configurable: bool = True,
    deployment_default: bool = False,
    parse: Callable[[str], Any] | None = None,
    **bounds: float,
) -> Any:
    return field(
        default=default,
        metadata={"setting": Setting(help, bounds, flag, configurable, deployment_default, parse)},
    )


@dataclass
class TrainingOptions:
    base_model: str = _setting(
        base_model.COMPACT,
        "A hub id (e.g. microsoft/layoutlm-base-uncased), a local folder, an s3:// prefix, or 'compact'. Its "
        "tokenizer must be the windows' one.",
        flag="--pretrained",
        deployment_default=True,
    )
    epochs: float = _setting(10, "Training epochs.", gt=0)
    per_device_batch_size: int | None = _setting(
        None, "Windows per device and step; default: 8, or 4 for 'compact' (32 on a GPU).", flag="--batch-size", ge=1
    )
    gradient_accumulation_steps: int | None = _setting(
        None, "Steps accumulated per optimizer step; default: 4, or 1 for 'compact' and on a GPU.", ge=1
    )
    learning_rate: float | None = _setting(None, "Default: 5e-5, or 2e-4 for 'compact'.", flag="--lr", gt=0)
    weight_decay: float = _setting(0.01, "AdamW weight decay.", ge=0)
    warmup_ratio: float = _setting(0.1, "Share of the steps spent warming the learning rate up.", ge=0, lt=1)
    label_smoothing: float = _setting(0.0, "Label smoothing of the token loss.", ge=0, lt=1)
    tag_weight_power: float = _setting(
        0.5,
        "Each label's weight in the loss (its B- and I- tags alike): (O tokens / the label's tokens in the train "
        "split) to this power, at most tag_weight_cap; 0: every tag weighs the same.",
        ge=0,
        le=1,
    )
    tag_weight_cap: float = _setting(10.0, "The largest weight tag_weight_power gives a label.", ge=1)
    label_weights: dict[str, float] | None = _setting(
        None,
        "Explicit loss weights, label -> weight > 0 (on the command line LABEL=W,LABEL=W), for the label's B- and "
        "I- tags; they replace tag_weight_power's weight for those labels, the others keep theirs (1 where the "
        "power is 0). Validation still takes log(weight) from the logits, as for computed weights.",
        parse=label_weights_argument,
    )
    selection_metric: str = _setting(
        ENTITY_F1,
        "What selects the O offset of each evaluation, the checkpoint kept and when to stop early: 'entity_f1' "
        "(overall micro entity F1) or 'macro_f1:<group>', the mean seqeval F1 of the group's labels: "
        + ", ".join(f"{name} ({', '.join(labels)})" for name, labels in LABEL_GROUPS.items())
        + ".",
        parse=selection_metric_argument,
    )
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm.", gt=0)
    early_stopping_patience: int = _setting(
        3, "Evaluations without a better validation F1, averaged over the last 3, before stopping.", ge=1
    )
    seed: int = _setting(42, "Seed of the head's initialisation, the batch order and augmentation.")
    auto_batch_size: bool = _setting(False, "Halve the batch on out-of-memory until it fits.")
    mixed_precision: bool = _setting(
        True,
        "bfloat16 autocast where the device computes it natively (CUDA from Ampere on, a CPU with AVX512-BF16 "
        "or AMX), else float16 on CUDA and float32 on a CPU; off: float32 throughout.",
    )
    augment: bool = _setting(False, "Rotate, scale and jitter train boxes as they are read.")
    max_steps: int = _setting(-1, "Stop after this many optimizer steps; -1: epochs decide.")
    eval_steps: int | None = _setting(None, "Evaluate and save every N steps, not every epoch.", ge=1)
    max_train_minutes: float | None = _setting(
        None,
        "Stop, after a save, past this time; default: the deployment's budget (2.5 minutes locally, none in prod; "
        "RECEIPT_PIPELINE_MAX_TRAIN_MINUTES).",
        deployment_default=True,
        gt=0,
    )
    # set by tests and benchmarks only
    group_by_length: bool = _setting(True, "Batches of similar length (LengthBucketSampler).", configurable=False)
    dataloader_workers: int = _setting(2, "DataLoader workers, on CUDA only.", configurable=False)
    dropout: float | None = _setting(None, "Hidden and attention dropout; None: the base model's own.",
                                     configurable=False)  # fmt: skip
    pad_to_length: int | None = _setting(
        None,
        "Pad every window to this many tokens instead of the batch's longest (the earlier system's setting, "
        "kept to measure against; BENCHMARKS.md).",
        configurable=False,
    )

    def __post_init__(self) -> None:
        selection_group(self.selection_metric)
        self.label_weights = checked_label_weights(self.label_weights)

    @property
    def selection_labels(self) -> tuple[str, ...] | None:
        """The labels ``selection_metric`` averages the F1 of; None for the overall entity F1."""
        return selection_group(self.selection_metric)

    def check_labels(self, labels: Iterable[str]) -> tuple[str, ...] | None:
        """The selection group's labels among the model's ``labels`` (None for the overall entity F1), once
        every label ``label_weights`` names is one of them and the group has at least one; a
        :class:`TrainingOptionsError` naming the labels at fault otherwise."""
        labels = list(labels)
        unknown = sorted(set(self.label_weights or {}) - set(labels))
        if unknown:
            raise TrainingOptionsError(
                f"label_weights name labels the model does not have: {', '.join(unknown)}; "
                f"its labels: {', '.join(labels)}"
            )
        group = self.selection_labels
        if group is None:
            return None
        present = tuple(label for label in group if label in labels)
        if not present:
            raise TrainingOptionsError(
                f"selection_metric {self.selection_metric!r}: the model has none of the group's labels "
                f"({', '.join(group)}); its labels: {', '.join(labels)}"
            )
        return present

    def resolved(self, gpu: bool = False) -> TrainingOptions:
        """These options with every base-model default filled in. On a ``gpu``, where neither the batch nor the
        accumulation was set, the default accumulation is folded into the batch: the same optimizer steps in one
        pass, since a GPU takes as long for batch 8 as for 32 (BENCHMARKS.md, GPU sweep)."""
        defaults = DEFAULTS_BY_BASE_MODEL.get(self.base_model, BASE_DEFAULTS)
        if gpu and self.per_device_batch_size is None and self.gradient_accumulation_steps is None:
            folded = defaults["per_device_batch_size"] * defaults["gradient_accumulation_steps"]
            defaults = {**defaults, "per_device_batch_size": folded, "gradient_accumulation_steps": 1}
        unset = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return replace(self, **unset)

    @property
    def max_train_seconds(self) -> float | None:
        return self.max_train_minutes * 60 if self.max_train_minutes else None

    @classmethod
    def from_config(cls, values: dict[str, Any], **deployment: Any) -> TrainingOptions:
        """Options from config values (the names of :func:`config_fields`); a setting left None that the
        deployment decides takes ``deployment``'s value, e.g. ``base_model=settings.base_model``."""
        chosen = {name: value for name, value in values.items() if name in _FIELD_NAMES}
        for name, value in deployment.items():
            if chosen.get(name) is None:
                chosen[name] = value
        return cls(**{name: value for name, value in chosen.items() if value is not None or _nullable(name)})


_FIELD_NAMES = {f.name for f in dataclasses.fields(TrainingOptions)}


def settings() -> dict[str, tuple[Setting, Any, Any]]:
    """Name -> (its :class:`Setting`, its type, its default), in declaration order."""
    hints = typing.get_type_hints(TrainingOptions)
    return {f.name: (f.metadata["setting"], hints[f.name], f.default) for f in dataclasses.fields(TrainingOptions)}


def _nullable(name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainingOptions)[name])


def config_fields(
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    bounds: dict[str, dict[str, float]] | None = None,
) -> dict[str, tuple]:
    """``pydantic.create_model`` field definitions for the configurable settings (but ``exclude``), with their
    defaults and bounds (or ``defaults`` and ``bounds``, e.g. a sweep's shorter trials) and help. A setting the
    deployment decides defaults to None there."""
    from pydantic import Field

    fields: dict[str, tuple] = {}
    for name, (setting, kind, default) in settings().items():
        if not setting.configurable or name in exclude:
            continue
        default = (defaults or {}).get(name, default)
        if setting.deployment_default:
            kind, default = kind | None, None
        limits = (bounds or {}).get(name, setting.bounds)
        fields[name] = (kind, Field(default=default, description=setting.help, **limits))
    return fields


@dataclass(frozen=True)
class Flag:
    name: str  # the setting
    flag: str  # e.g. --lr
    kind: Any  # int, float, str or bool, or a function that reads the flag's text (Setting.parse)
    help: str
    bounds: dict[str, float]


def cli_settings() -> list[Flag]:
    """The configurable settings as command-line flags: the earlier tool's name where it had one, else the
    setting's name in kebab case. Every flag defaults to unset, so an unset one leaves the config's default."""
    flags = []
    for name, (setting, kind, _default) in settings().items():
        if not setting.configurable or setting.flag is None:
            continue
        base = [arg for arg in typing.get_args(kind) if arg is not type(None)] or [kind]
        flag = setting.flag or "--" + name.replace("_", "-")
        flags.append(Flag(name, flag, setting.parse or base[0], setting.help, setting.bounds))
    return flags
