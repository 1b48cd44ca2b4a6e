"""The user data script and its run spec."""

from __future__ import annotations

import pytest

from receipt_pipeline.launcher import bootstrap, user_data

SPEC = {"run_id": "r1", "dagster_yaml": "telemetry: {enabled: false}\n", "execute_run_args": "{}", "secrets": {}}


def test_the_project_is_installed_from_a_wheel_under_s3_or_pinned_from_an_index():
    from_s3 = user_data.install_commands("1.2.3", wheel_prefix="s3://bucket/wheels/")
    assert "aws s3 cp s3://bucket/wheels/receipt_pipeline-1.2.3-py3-none-any.whl" in from_s3
    pinned = user_data.install_commands("1.2.3", index_url="https://pypi.internal/simple")
    assert pinned.endswith("--index-url https://pypi.internal/simple receipt_pipeline==1.2.3")


def test_the_run_spec_reads_back_from_the_rendered_script():
    text = user_data.render("r1", "1.2.3", SPEC, user_data.install_commands("1.2.3"))
    assert text.startswith("#!/bin/bash\n") and "trap 'shutdown -h now' EXIT" in text
    assert user_data.read_run_spec(text) == SPEC
    with pytest.raises(user_data.UserDataError, match="no RUN_SPEC block"):
        user_data.read_run_spec("#!/bin/bash\necho hi\n")


def test_user_data_over_the_ec2_limit_is_refused_naming_the_run():
    big = {**SPEC, "env": {"PADDING": "x" * user_data.MAX_USER_DATA_BYTES}}
    with pytest.raises(user_data.UserDataError, match="user data for run r1 is .* bytes"):
        user_data.render("r1", "1.2.3", big, "")


def test_a_secret_reference_must_name_its_store():
    with pytest.raises(ValueError, match="secret DB_PASSWORD: 'vault:x' is neither"):
        bootstrap.fetch_secrets({"DB_PASSWORD": "vault:x"})


def test_no_metadata_service_means_no_spot_notice():
    watcher = bootstrap.SpotNoticeWatcher("http://127.0.0.1:9", timeout=0.2)
    assert watcher.notice() is None
