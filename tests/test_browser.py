"""A release manager's view: after a tiny loop, the MLflow UI served by `tuneloop up` shows the
registered model with its `champion` and `challenger` aliases, and the training and eval runs; an
on-call engineer's: a served request in the Traces tab.

Drives Debian's headless Chromium with Selenium. The set-up installs `chromium` and
`chromium-driver` with apt-get when they are missing and it runs as root (as in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, tuneloop_up
from tests.loop_helpers import ingest_directly, tiny_config

pytestmark = pytest.mark.acceptance

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser_binaries() -> None:
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            check=True,
            env=env,
            capture_output=True,
            timeout=1200,
        )
        return
    message = "needs Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@contextlib.contextmanager
def _browser() -> Iterator[Any]:
    driver = _driver()
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_text(driver, texts: list[str], timeout_s: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline, body = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    raise AssertionError(f"the page never showed {texts}; it showed:\n{body[:2000]}")


def _wait_for_frame_text(driver, texts: list[str], timeout_s: float = 90) -> None:
    """Wait until an iframe of the page (the MLflow UI shows HTML artifacts in one) shows every text."""
    from selenium.webdriver.common.by import By

    deadline, seen = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        for frame in driver.find_elements(By.TAG_NAME, "iframe"):
            driver.switch_to.frame(frame)
            try:
                seen = driver.find_element(By.TAG_NAME, "body").text
            finally:
                driver.switch_to.default_content()
            if all(t in seen for t in texts):
                return
        time.sleep(0.5)
    raise AssertionError(f"no frame showed {texts}; the last one showed:\n{seen[:2000]}")


def test_mlflow_ui_shows_aliases_and_runs_after_a_tiny_loop(browser_binaries, loop_env, tiny_model: Path) -> None:
    from dataclasses import replace

    from tuneloop.demo.run import Demo

    rc = loop_env
    demo = Demo(rc, replace(tiny_config(tiny_model)), lambda _s: None)
    champion = demo.champion()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    send = ingest_directly(rc)
    send(demo.traffic("reference", start))
    demo.declare(start, start + timedelta(seconds=demo.cfg.reference_windows * demo.cfg.window))
    send(demo.traffic("calm", start + timedelta(hours=1)))
    send(demo.traffic("drift", start + timedelta(hours=2)))
    result = demo.close_the_loop()
    challenger = result["retrain"]["version"]
    assert result["retrain"]["state"] == "registered"

    with tuneloop_up() as up, _browser() as driver:
        ui = up.url
        driver.get(f"{ui}/#/models/tiny-support")
        page = _wait_for_text(driver, ["tiny-support", "champion", "challenger", f"Version {challenger}"])
        assert f"Version {champion['version']}" in page

        training = rc.mlflow.get_experiment_by_name("tuneloop-training").experiment_id
        driver.get(f"{ui}/#/experiments/{training}/runs")
        _wait_for_text(driver, ["train tiny-support (lora)"])
        training_runs = rc.mlflow.search_runs([training])
        assert len(training_runs) == 2  # champion and challenger
        evaluation = rc.mlflow.get_experiment_by_name("tuneloop-evaluation").experiment_id
        driver.get(f"{ui}/#/experiments/{evaluation}/runs")
        _wait_for_text(
            driver,
            [
                f"eval support-demo on tiny-support:{challenger}",
                f"eval support-demo on tiny-support:{champion['version']}",
            ],
        )
        driver.get(f"{ui}/#/models/tiny-support/versions/{challenger}")
        # its description says what it is and why it exists, above the machine-readable tags
        _wait_for_text(driver, ["tuneloop.alert.id", "tuneloop.retrain.id", "Trained by run", "Why: retrain 1 of"])

        # the drifted window's Evidently report, as the MLflow UI shows the artifact: tuneloop's verdict
        # above Evidently's own widgets, rendered by its scripts
        monitor = rc.stores.monitors.all()[0]
        drifted = [
            a.path
            for a in rc.mlflow.list_artifacts(monitor.mlflow_run_id, "reports")
            if a.path.endswith("-evidently.html")
        ]
        assert drifted, "a drifted window has an Evidently report"
        experiment = rc.mlflow.get_run(monitor.mlflow_run_id).info.experiment_id
        driver.get(f"{ui}/#/experiments/{experiment}/runs/{monitor.mlflow_run_id}/artifacts/{drifted[0]}")
        _wait_for_frame_text(
            driver, ["The verdicts that count are tuneloop's", "DRIFT", "output length", "prompt words"]
        )


def test_mlflow_ui_traces_tab_shows_a_served_request(browser_binaries, tiny_model: Path, tmp_path: Path) -> None:
    """An on-call engineer's view: a request answered by `tuneloop serve` is a trace in the served model's
    experiment, shown by the MLflow UI's Traces tab; the version's page carries its serving figures."""
    from tests.serving.test_api import _client, serving_two_adapters
    from tests.serving.test_production import _experiment, _trace_of

    question = "where is parcel 4711 of the browser test"
    env = {"TUNELOOP_SERVE__FIGURES_SECONDS": "1"}
    with serving_two_adapters(tiny_model, tmp_path, env) as served:
        rc = served["rc"]
        answer = _client(served).chat.completions.create(
            model="support@champion", messages=[{"role": "user", "content": question}], max_tokens=4
        )
        _trace_of(rc, answer.id)  # exported
        eventually(lambda: "Serving (" in (rc.model_version("support", 1).description or ""), "v1's figures")
    experiment = _experiment(rc).experiment_id

    home_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    with tuneloop_up(home_env | {"TUNELOOP_HOME": served["env"]["TUNELOOP_HOME"]}) as up, _browser() as driver:
        ui = up.url
        driver.get(f"{ui}/#/experiments/{experiment}/traces")
        _wait_for_text(driver, [question])
        driver.get(f"{ui}/#/models/support/versions/1")
        _wait_for_text(driver, ["Serving (", "completion tokens/s"])
