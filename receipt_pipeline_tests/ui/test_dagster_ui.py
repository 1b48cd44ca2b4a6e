"""The Dagster UI in a real browser: `dagster dev` on the local deployment, Debian's headless Chromium.

Screenshots are kept in test-artifacts/ui/ (or $RECEIPT_PIPELINE_TEST_ARTIFACTS/ui/): the README's
lineage pictures come from here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from receipt_pipeline.cli import stop_process
from receipt_pipeline_tests.conftest import seeded_receipts_table
from receipt_pipeline_tests.training_data import sroie_subset

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RECEIPT_PIPELINE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "ui"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# seconds of training in the UI's run: enough to show the chain, not a model worth keeping
TRAIN_MINUTES = os.environ.get("RECEIPT_PIPELINE_UI_TEST_TRAIN_MINUTES", "0.2")


@pytest.fixture(scope="module")
def chromium_paths() -> tuple[str, str]:
    if CHROMIUM and CHROMEDRIVER:
        return CHROMIUM, CHROMEDRIVER
    message = "Debian's chromium and chromium-driver are needed: `make test` installs them (apt-get, as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the page re-rendered under us: look again
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def dagster_dev(aws_emulator, shared_sroie_dir, module_tmp) -> Iterator[tuple[str, Path, dict]]:
    """`dagster dev` (webserver + daemon) on a free port, local deployment, a seeded emulator table."""
    root = module_tmp("ui")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    with seeded_receipts_table(receipts=30, seed=9) as table:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "RECEIPT_PIPELINE_DEPLOYMENT": "local",
            "RECEIPT_PIPELINE_DATA_DIR": str(root / "data"),
            "RECEIPTS_TABLE": table,
            "SROIE_DIR": str(sroie_subset(shared_sroie_dir, root / "sroie", receipts=40)),
            "RECEIPT_PIPELINE_MAX_TRAIN_MINUTES": TRAIN_MINUTES,
            "HF_HUB_OFFLINE": "1",
        }
        command = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
        with open(root / "dagster-dev.log", "wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait(lambda: process.poll() is not None or _answers(url + "/server_info"), 180, "dagster dev")
                assert process.poll() is None, (root / "dagster-dev.log").read_text()[-3000:]
                yield url, home, env
            finally:
                stop_process(process, timeout=30)


@pytest.fixture(scope="module")
def browser(chromium_paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chromium_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1600,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _button(driver, text: str):
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.TAG_NAME, "button"):
        if button.is_displayed() and button.text.strip().startswith(text):
            return button
    return None


def _click_through_prompts(driver, button_text: str) -> None:
    """Click a button, first dismissing the newsletter prompt the UI may open on a first visit."""
    from selenium.common.exceptions import ElementClickInterceptedException

    def clicked() -> bool:
        if skip := _button(driver, "Skip"):
            skip.click()
            return False
        button = _button(driver, button_text)
        if button is None:
            return False
        try:
            button.click()
        except ElementClickInterceptedException:
            return False
        return True

    _wait(clicked, 60, f"a clickable {button_text!r} button")


def _metadata_value(driver, key: str) -> str | None:
    """The value cell of ``key`` in an asset page's metadata table, as shown."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.XPATH, f"//tr[td[1][normalize-space()='{key}']]")
    return rows[0].find_elements(By.TAG_NAME, "td")[-1].text.strip() if rows else None


def _scroll_to_metadata(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    [row] = driver.find_elements(By.XPATH, f"//tr[td[1][normalize-space()='{key}']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)


def _open_markdown(driver, key: str) -> None:
    """Opens the ``[Show Markdown]`` dialog of metadata entry ``key``."""
    from selenium.webdriver.common.by import By

    [row] = driver.find_elements(By.XPATH, f"//tr[td[1][normalize-space()='{key}']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    # the element whose own text it is: its ancestors in the cell have the same text content
    links = row.find_elements(By.XPATH, ".//*[normalize-space(text())='[Show Markdown]']")
    assert links, f"{key}: no [Show Markdown] link in its row"
    links[0].click()


def _rendered_images(driver) -> dict[str, tuple[int, int]]:
    """The pictures the page has decoded, by alt text: an image the browser could not decode (or a src the
    Markdown sanitiser stripped) has no natural size and is left out."""
    drawn = driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('data:image/png'))"
        ".map(i => [i.alt, i.naturalWidth, i.naturalHeight]);"
    )
    return {alt: (width, height) for alt, width, height in drawn}


def _shot(driver, name: str) -> None:
    time.sleep(1)  # let the graph's layout settle
    driver.save_screenshot(str(ARTIFACTS / name))


def test_materialize_all_in_the_browser_and_read_the_reports_f1(dagster_dev, browser):
    url, home, _ = dagster_dev
    # the production model's upstream graph: everything it needs; the global graph's Materialize all also
    # takes in the sweep's partitioned trials, and asks which partitions
    browser.get(url + "/assets/production_model?view=lineage&lineageScope=upstream&lineageDepth=10")
    _wait(lambda: _button(browser, "Materialize all"), 120, "the Materialize all button")
    time.sleep(3)  # the first visit's newsletter prompt opens a moment after the page
    if skip := _button(browser, "Skip"):
        skip.click()
    _shot(browser, "01-asset-graph.png")
    _click_through_prompts(browser, "Materialize all")
    try:
        _wait(lambda: "Launched run" in browser.page_source, 60, "the launched-run toast")
    finally:
        _shot(browser, "01-after-materialize-all.png")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = _wait(lambda: instance.get_runs(), 60, "the run in the instance")
        run = _wait(
            lambda: (latest := instance.get_run_by_id(run.run_id)).is_finished and latest,
            600,
            "the run to finish",
            interval=3,
        )
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}"
        recorded = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report"))
        entity_f1 = recorded.asset_materialization.metadata["entity_f1"].value
        checkpoint = instance.get_latest_materialization_event(dg.AssetKey("layoutlm_checkpoint"))
        checkpoint_version = checkpoint.asset_materialization.metadata["weights_sha256"].value

    browser.get(f"{url}/runs/{run.run_id}")
    _wait(lambda: "Success" in browser.find_element("tag name", "body").text, 60, "the run page to say Success")
    _shot(browser, "02-run.png")

    browser.get(url + "/assets/evaluation_report")
    shown = _wait(lambda: _metadata_value(browser, "entity_f1"), 60, "entity_f1 in the report's metadata")
    assert float(shown) == pytest.approx(entity_f1, abs=1e-3)
    assert _metadata_value(browser, "field_f1") is not None
    assert _metadata_value(browser, "checkpoint_version") == checkpoint_version
    _scroll_to_metadata(browser, "entity_f1")
    _shot(browser, "03-evaluation-report.png")
    _open_markdown(browser, "report")
    pictures = _wait(lambda: _rendered_images(browser), 60, "the report's pictures in its Markdown")
    assert set(pictures) == {"per-label F1", "confusion matrix"}, pictures
    for title, (width, height) in pictures.items():
        assert width >= 200 and height >= 200, f"{title} drawn {width}x{height}"
    _shot(browser, "03b-evaluation-report-markdown.png")

    # the README's walk from the production model back to its data
    browser.get(url + "/assets/production_model")
    _wait(lambda: _metadata_value(browser, "checkpoint_version"), 60, "the production model's metadata")
    assert _metadata_value(browser, "checkpoint_version") == checkpoint_version
    assert _metadata_value(browser, "training_run") == run.run_id
    _scroll_to_metadata(browser, "training_run")
    _shot(browser, "04-production-model.png")

    browser.get(url + "/assets/layoutlm_checkpoint")
    labels = _wait(lambda: _metadata_value(browser, "table_valid_labels"), 60, "the checkpoint's table snapshot")
    assert int(labels.replace(",", "")) > 0
    assert _metadata_value(browser, "bio_receipt_split_version")
    _scroll_to_metadata(browser, "bio_receipt_split_version")
    _shot(browser, "05-checkpoint.png")

    browser.get(url + "/assets/production_model?view=lineage&lineageScope=upstream&lineageDepth=10")
    upstream = ("receipts_table", "raw_receipt_words", "sroie_receipts", "bio_receipt_split", "windowed_tensors")

    def graph_shows_the_data() -> bool:
        text = browser.find_element("tag name", "body").text
        return all(name in text for name in upstream)

    try:
        _wait(graph_shows_the_data, 60, f"the upstream lineage graph to show {upstream}")
    finally:
        _shot(browser, "06-lineage.png")


def test_layoutlm_cli_submits_training_and_a_sweep_to_the_running_webserver(dagster_dev):
    # after the test above: the windows exist in this deployment
    url, home, env = dagster_dev

    def layoutlm_cli(*args: str) -> str:
        command = [sys.executable, "-m", "receipt_pipeline.layoutlm_cli", *args, "--dagster-url", url]
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done.stdout

    out = layoutlm_cli("train", "--job-name", "submitted", "--max-steps", "2")
    run_folder = Path(env["RECEIPT_PIPELINE_DATA_DIR"]) / "runs" / "submitted"
    assert "(SUCCESS)" in out and f"run folder: {run_folder}" in out
    assert (run_folder / "best" / "model.safetensors").is_file()

    out = layoutlm_cli("sweep", "--study", "remote", "--trials", "2", "--max-steps", "2")
    assert "trial remote-000: dagster run" in out and "trial remote-001: dagster run" in out
    assert "best_hyperparameters: dagster run" in out and out.rstrip().endswith("(SUCCESS)")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert {"remote-000", "remote-001"} <= set(instance.get_dynamic_partitions("sweep_trials"))
        best = instance.get_latest_materialization_event(dg.AssetKey("best_hyperparameters"))
        assert best.asset_materialization.metadata["partition"].value in ("remote-000", "remote-001")
        trials = [
            record
            for record in instance.get_run_records()
            if record.dagster_run.tags.get("dagster/partition", "").startswith("remote-")
        ]
    # both were queued at once; the local pool "gpu" (limit 1) ran them one after another
    first, second = sorted(trials, key=lambda record: record.start_time)
    assert first.end_time <= second.start_time
