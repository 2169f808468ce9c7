"""Fixtures shared by the monitor tests."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tuneloop.demo import traffic as drift_data


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 records from the demo's traffic distribution: the reference drift is judged against."""
    rng = random.Random(12345)
    return drift_data.write(
        tmp_path_factory.mktemp("ref") / "reference.jsonl", [drift_data.record(rng) for _ in range(6000)]
    )


def run_backtest(
    monitor: Path, reference: Path, current: Path, *options: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """`tuneloop monitor backtest` of `monitor` on two record files."""
    files = ["--monitor", str(monitor), "--reference", str(reference), "--current", str(current)]
    return run_cli("monitor", "backtest", *files, *options, env=env, timeout=1800)
