"""The environment is read in one place, and a malformed value is refused naming its variable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from receipt_pipeline.core import settings
from receipt_pipeline.core.settings import DeploymentSettings, SettingsError

PACKAGE = Path(settings.__file__).resolve().parents[1]


ENVIRONMENT_NAMES = {"environ", "getenv", "environb", "putenv"}


def _environment_reads(path: Path) -> list[str]:
    """``os.environ`` and ``os.getenv`` (and ``from os import environ, getenv``) in a module, by line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        attribute = (
            isinstance(node, ast.Attribute)
            and node.attr in ENVIRONMENT_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )
        imported = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and bool({alias.name for alias in node.names} & ENVIRONMENT_NAMES)
        )
        if attribute or imported:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_no_module_but_settings_touches_the_environment():
    modules = [path for path in PACKAGE.rglob("*.py") if path != Path(settings.__file__).resolve()]
    assert len(modules) > 30
    assert [read for path in modules for read in _environment_reads(path)] == []
    assert _environment_reads(Path(settings.__file__).resolve()), "the check sees what it looks for"


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", "soon", "valid number"),
        ("RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", "-1", "greater than or equal to 0"),
        ("RECEIPT_PIPELINE_RETRAIN_MIN_NEW_LABELS", "many", "valid integer"),
        ("RECEIPT_PIPELINE_PROMOTION_TOLERANCE", "-0.5", "greater than or equal to 0"),
        ("RECEIPT_PIPELINE_RETRAIN_CRON", "weekly", "five cron fields"),
        ("RECEIPT_PIPELINE_DEPLOYMENT", "staging", "expected one of local, prod"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(variable, value, said):
    with pytest.raises(SettingsError, match=f"{variable}={value!r}") as refused:
        DeploymentSettings.from_env({variable: value})
    assert said in str(refused.value)


def test_empty_values_count_as_unset_and_the_deployment_picks_the_defaults(tmp_path):
    local = DeploymentSettings.from_env(
        {"RECEIPT_PIPELINE_DATA_DIR": str(tmp_path), "RECEIPT_PIPELINE_MAX_TRAIN_MINUTES": "", "SROIE_DIR": ""}
    )
    assert (local.max_train_minutes, local.sroie_dir, local.base_model) == (2.5, None, "compact")
    assert local.optuna_storage == f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    prod = DeploymentSettings.from_env(
        {"RECEIPT_PIPELINE_DEPLOYMENT": "prod", "RECEIPTS_TABLE": "t", "RECEIPT_PIPELINE_BUCKET": "b"}
    )
    assert (prod.artifact_root, prod.base_model, prod.max_train_minutes) == (
        "s3://b",
        "microsoft/layoutlm-base-uncased",
        None,
    )


def test_settings_from_a_mapping_read_nothing_else_and_from_the_process_read_it_now(monkeypatch):
    monkeypatch.setenv("SROIE_DIR", "/from/the/process")
    monkeypatch.setenv("RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", "7")
    given = DeploymentSettings.from_env({"RECEIPTS_TABLE": "given"})
    assert (given.sroie_dir, given.max_train_minutes, given.receipts_table) == (None, 2.5, "given")
    assert DeploymentSettings.from_env().sroie_dir == "/from/the/process"
    monkeypatch.setenv("RECEIPT_PIPELINE_MAX_TRAIN_MINUTES", "8")
    assert settings.environment().RECEIPT_PIPELINE_MAX_TRAIN_MINUTES == 8  # read afresh, never cached
