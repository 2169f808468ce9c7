"""Drift checks through `tuneloop monitor backtest`: quiet on fresh reference windows, loud on contamination."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.monitors.conftest import run_backtest
from tuneloop.demo import traffic as drift_data


def _monitor(tmp_path: Path, size: int = 500) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(f"name: support\nwindow: {{kind: count, size: {size}}}\nmin_size: 200\nalpha: 0.05\n")
    return path


def _run_backtest(tmp_path: Path, reference: Path, current: Path, *options: str) -> subprocess.CompletedProcess:
    return run_backtest(_monitor(tmp_path), reference, current, *options, env={"TUNELOOP_HOME": str(tmp_path / "home")})


def _backtest(tmp_path: Path, reference: Path, current: Path) -> dict:
    result = _run_backtest(tmp_path, reference, current, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_few_false_alarms_on_windows_from_the_reference_distribution(reference: Path, tmp_path: Path) -> None:
    n = 100
    report = _backtest(
        tmp_path, reference, drift_data.write(tmp_path / "fresh.jsonl", drift_data.windows(n, 500, seed=7))
    )
    assert report["summary"]["judged"] == n
    assert report["summary"]["drift_share"] <= 0.072, [
        w["drifted_checks"] for w in report["windows"] if w["drifted_checks"]
    ]


@pytest.mark.acceptance
def test_false_alarm_rate_over_400_windows(reference: Path, tmp_path: Path) -> None:
    report = _backtest(
        tmp_path, reference, drift_data.write(tmp_path / "fresh.jsonl", drift_data.windows(400, 500, seed=8))
    )
    assert report["summary"]["judged"] == 400 and report["summary"]["drift_share"] <= 0.072


EXPECTED_CHECK = {
    "off_topic": "prompt.oov_share",
    "longer_outputs": "output.length",
    "language": "oov_share",
    "refusals": "output.refusal",
    "wrong_predictions": "quality.accuracy",
}


@pytest.mark.acceptance
@pytest.mark.parametrize("kind", drift_data.KINDS)
@pytest.mark.parametrize(("share", "power"), [(0.2, 0.95), (0.1, 0.8)])
def test_power_against_planted_contamination(
    reference: Path, tmp_path: Path, kind: str, share: float, power: float
) -> None:
    n = 40
    rows = drift_data.windows(
        n, 500, seed=drift_data.KINDS.index(kind) * 100 + round(share * 100), kind=kind, share=share
    )
    report = _backtest(tmp_path, reference, drift_data.write(tmp_path / "current.jsonl", rows))
    detected = [w for w in report["windows"] if w["status"] == "drift"]
    assert len(detected) / n >= power, (kind, share, len(detected))
    named = [w for w in detected if any(EXPECTED_CHECK[kind] in c for c in w["drifted_checks"])]
    assert len(named) >= 0.9 * len(detected)  # the report names the check that fired


def test_planted_refusals_are_found_by_the_refusal_check(reference: Path, tmp_path: Path) -> None:
    rows = drift_data.windows(5, 500, seed=99, kind="refusals", share=0.1)
    report = _backtest(tmp_path, reference, drift_data.write(tmp_path / "current.jsonl", rows))
    assert all(w["status"] == "drift" and "output.refusal" in w["drifted_checks"] for w in report["windows"])


def test_small_windows_say_not_enough_data_and_bad_files_fail(reference: Path, tmp_path: Path) -> None:
    report = _backtest(
        tmp_path, reference, drift_data.write(tmp_path / "short.jsonl", drift_data.windows(1, 150, seed=1))
    )
    assert [w["status"] for w in report["windows"]] == ["not enough data"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "output": "hello"}\n{"prompt": 3, "output": "x"}\n')
    result = _run_backtest(tmp_path, reference, bad)
    assert (
        result.returncode == 1 and f"{bad}:2: `prompt`: Input should be a valid string" in result.stderr
    )  # the ingest API's words


def test_odd_text_gives_a_result(reference: Path, tmp_path: Path) -> None:
    odd = [{"prompt": "refund " * 50, "output": ""}, {"prompt": "🙂🙂", "output": "🎉"}] * 150
    report = _backtest(tmp_path, reference, drift_data.write(tmp_path / "odd.jsonl", odd))
    assert report["windows"][0]["status"] == "drift"


def test_time_windows_and_the_domain_classifiers_explanation(reference: Path, tmp_path: Path) -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    calm = drift_data.windows(1, 300, seed=21)
    off_topic = drift_data.windows(1, 300, seed=22, kind="off_topic", share=0.3)
    rows = [{**r, "timestamp": (start + timedelta(seconds=12 * i)).isoformat()} for i, r in enumerate(calm + off_topic)]
    monitor = tmp_path / "hourly.yaml"
    monitor.write_text("name: hourly\nwindow: {kind: time, duration: 1h}\nmin_size: 100\n")
    home = {"TUNELOOP_HOME": str(tmp_path / "home")}
    result = run_backtest(monitor, reference, drift_data.write(tmp_path / "stamped.jsonl", rows), "--json", env=home)
    assert result.returncode == 0, result.stderr[-2000:]
    windows = json.loads(result.stdout)["windows"]
    assert [(w["size"], w["status"], w["start"]) for w in windows] == [
        (300, "ok", start.isoformat()),
        (300, "drift", (start + timedelta(hours=1)).isoformat()),
    ]
    domain = next(c for c in windows[1]["checks"] if c["check"] == "prompt.domain")
    assert domain["drifted"] and {"weather", "football", "quantum", "recipe"} & set(domain["details"]["typical_words"])
    unstamped = run_backtest(monitor, reference, drift_data.write(tmp_path / "plain.jsonl", calm), env=home)
    assert unstamped.returncode == 1 and "plain.jsonl:1: `timestamp` is missing" in unstamped.stderr


@pytest.mark.acceptance
def test_embedding_drift_is_quiet_on_fresh_windows_and_finds_planted_changes(reference: Path, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 + MMD beside the other checks, on windows of 250 (embedding costs ~5 ms a text here)."""
    monitor = tmp_path / "embedding.yaml"
    monitor.write_text(
        "name: emb\nwindow: {size: 250}\nmin_size: 100\nchecks: [descriptors, domain, quality, embedding]\n"
    )
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP_CACHE_DIR": str(tmp_path / "cache")}
    rows = (
        drift_data.windows(20, 250, seed=31)
        + drift_data.windows(8, 250, seed=32, kind="off_topic", share=0.2)
        + drift_data.windows(8, 250, seed=33, kind="language", share=0.2)
    )
    result = run_backtest(monitor, reference, drift_data.write(tmp_path / "current.jsonl", rows), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    windows = json.loads(result.stdout)["windows"]
    fresh, off_topic, language = windows[:20], windows[20:28], windows[28:]
    assert sum(w["status"] == "drift" for w in fresh) <= 3  # 5% of 20 is 1; 3+ would be p < 0.08 at alpha 0.05
    embedding_p = [c["p_value"] for w in fresh for c in w["checks"] if c["check"].endswith(".embedding")]
    assert len(embedding_p) == 40 and sum(p < 0.05 for p in embedding_p) <= 6
    assert all("prompt.embedding" in w["drifted_checks"] for w in off_topic)
    assert all({"prompt.embedding", "output.embedding"} <= set(w["drifted_checks"]) for w in language)
    assert (tmp_path / "cache" / "embeddings-minilm.sqlite").is_file()  # embedded once, reused by later checks
