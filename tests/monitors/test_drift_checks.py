"""The drift checks one by one: calibrated p-values under no drift, power against a real change, values
against scipy / rouge-score called directly, windows cut as declared."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from tests.conftest import REPO
from tuneloop.demo import traffic as drift_data
from tuneloop.monitors.drift.checks import Record, permutations_for
from tuneloop.monitors.drift.domain import domain_check
from tuneloop.monitors.drift.embedding import build_embedding_reference, mmd_check
from tuneloop.monitors.drift.quality import build_quality_reference, quality_checks
from tuneloop.monitors.monitor_spec import MonitorSpec, WindowSpec
from tuneloop.monitors.windowing import split


def _unit(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, 16))
    x[:, 0] += shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_mmd_permutation_p_values_are_uniform_without_drift_and_small_with_it() -> None:
    rng = np.random.default_rng(0)
    # Fresh reference and window per trial: that is what a permutation p-value is exact over. (Against one
    # fixed reference the false-alarm rate varies around alpha; the backtests measure it on real windows.)
    p_values = np.array(
        [
            mmd_check("x", build_embedding_reference(_unit(rng, 120)), _unit(rng, 60), threshold=0.01, seed=i).p_value
            for i in range(300)
        ]
    )
    for level, low, high in ((0.05, 0.015, 0.09), (0.1, 0.05, 0.15), (0.2, 0.13, 0.27)):
        assert low <= np.mean(p_values <= level) <= high, (level, np.mean(p_values <= level))
    reference = build_embedding_reference(_unit(rng, 120))
    drifted = mmd_check("x", reference, _unit(rng, 60, shift=1.5), threshold=0.01)
    assert drifted.p_value <= 1 / (permutations_for(0.01) + 1) + 1e-12 and drifted.details[
        "permutations"
    ] == permutations_for(0.01)


def test_enough_permutations_to_reach_a_corrected_threshold() -> None:
    for threshold in (0.05, 0.05 / 30, 0.001):
        assert 1 / (permutations_for(threshold) + 1) <= threshold / 10 + 1e-12


def _texts(n: int, seed: int, column: str = "prompt", kind: str | None = None, share: float = 0.0) -> list[str]:
    return [r[column] for r in drift_data.windows(1, n, seed=seed, kind=kind, share=share)]


def test_domain_classifier_is_calibrated_without_drift() -> None:
    reference = _texts(2000, seed=1)
    p_values = [domain_check("prompt.domain", reference, _texts(200, seed=100 + i), seed=i).p_value for i in range(60)]
    assert np.mean(np.asarray(p_values) < 0.05) <= 0.15
    assert stats.kstest(p_values, "uniform").pvalue > 0.001


def test_domain_classifier_finds_and_explains_off_topic_prompts() -> None:
    result = domain_check("prompt.domain", _texts(2000, seed=1), _texts(400, seed=2, kind="off_topic", share=0.3))
    assert result.p_value < 1e-4 and result.statistic > 0.6  # held-out ROC AUC
    off_topic_words = {
        "weather",
        "tomorrow",
        "football",
        "match",
        "recipe",
        "quantum",
        "entanglement",
        "explain",
        "child",
        "won",
    }
    assert len(off_topic_words & set(result.details["typical_words"])) >= 3
    assert any(any(w in e.lower() for w in off_topic_words) for e in result.details["typical_examples"])


def test_domain_classifier_on_text_without_repeated_words_gives_a_result() -> None:
    result = domain_check("output.domain", ["🙂"] * 300, ["🎉"] * 300)
    assert result.p_value == 1.0 and "nothing to learn" in result.details["note"]


def _feedback_records(n: int, seed: int, rating_mean: float = 4.0, answer_noise: float = 0.1) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = drift_data.record(rng)
        answer = row["output"] if rng.random() > answer_noise else "Please contact our team about it."
        rating = min(5.0, max(1.0, round(rng.gauss(rating_mean, 0.8))))
        out.append(Record(row["prompt"], row["output"], row["prediction"], row["label"], rating, answer))
    return out


def test_quality_checks_match_scipy_and_rouge_score_and_fire_on_worse_feedback() -> None:
    from rouge_score import rouge_scorer

    reference = build_quality_reference(_feedback_records(600, seed=1))
    window = _feedback_records(300, seed=2, rating_mean=3.4, answer_noise=0.4)
    checks, notes = quality_checks(reference, window, min_feedback=50)
    by_name = {c.check: c for c in checks}
    assert set(by_name) == {"quality.accuracy", "quality.f1", "quality.rating", "quality.rouge"} and notes == []
    ratings = [r.rating for r in window]
    expected = stats.mannwhitneyu(ratings, reference.ratings, alternative="less", method="asymptotic").pvalue
    assert (
        by_name["quality.rating"].p_value == pytest.approx(expected, rel=1e-12)
        and by_name["quality.rating"].p_value < 1e-6
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = [scorer.score(r.reference_answer, r.output)["rougeL"].fmeasure for r in window]
    assert by_name["quality.rouge"].statistic == pytest.approx(float(np.mean(direct)), abs=1e-9)
    assert by_name["quality.rouge"].p_value < 1e-6
    wrong = sum(r.prediction != r.label for r in window)
    ref_correct, ref_total = reference.correct
    fisher = stats.fisher_exact(
        [[wrong, len(window) - wrong], [ref_total - ref_correct, ref_correct]], alternative="greater"
    )
    assert by_name["quality.accuracy"].p_value == pytest.approx(fisher.pvalue, rel=1e-12)
    from sklearn.metrics import f1_score

    direct_f1 = f1_score([r.label for r in window], [r.prediction for r in window], average="macro")
    assert by_name["quality.f1"].statistic == pytest.approx(direct_f1, abs=1e-6)


def _labelled(n: int, seed: int, rare_always_wrong: bool) -> list[Record]:
    """Three common intents and a rare one (5%); predictions 90% right, or never right for the rare one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = "fraud" if rng.random() < 0.05 else rng.choice(["shipping", "refund", "account"])
        right = rng.random() < 0.9 and not (rare_always_wrong and label == "fraud")
        prediction = label if right else rng.choice([c for c in ("shipping", "refund", "account") if c != label])
        out.append(Record("p", "o", prediction, label))
    return out


def test_macro_f1_finds_a_rare_class_the_model_now_gets_wrong_where_accuracy_does_not() -> None:
    reference = build_quality_reference(_labelled(2000, seed=1, rare_always_wrong=False))
    checks, _ = quality_checks(
        reference, _labelled(500, seed=2, rare_always_wrong=True), min_feedback=50, threshold=0.05 / 30
    )
    by_name = {c.check: c for c in checks}
    assert by_name["quality.f1"].p_value < 0.05 / 30 < by_name["quality.accuracy"].p_value
    calm = [
        quality_checks(
            reference,
            _labelled(500, seed=10 + i, rare_always_wrong=False),
            min_feedback=50,
            threshold=0.05 / 30,
            seed=i,
        )[0]
        for i in range(20)
    ]
    assert sum(next(c for c in found if c.check == "quality.f1").p_value < 0.05 for found in calm) <= 4


def test_quality_checks_stay_quiet_on_the_same_feedback_and_say_why_they_skip() -> None:
    reference = build_quality_reference(_feedback_records(600, seed=1))
    checks, _ = quality_checks(reference, _feedback_records(300, seed=3), min_feedback=50)
    assert all(c.p_value > 0.001 for c in checks)
    unrated = [Record(r.prompt, r.output, r.prediction, r.label) for r in _feedback_records(300, seed=4)]
    sparse = unrated[:280] + _feedback_records(20, seed=5)
    checks, notes = quality_checks(reference, sparse, min_feedback=50)
    assert [c.check for c in checks] == ["quality.accuracy", "quality.f1"]
    assert any(n.startswith("quality.rating: 20 record(s)") for n in notes)


def _stamped(n: int, minutes: float) -> list[Record]:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    return [Record(f"p{i}", "o", ts=t0 + timedelta(minutes=i * minutes)) for i in range(n)]


def test_windows_are_cut_as_declared() -> None:
    records = [Record(f"p{i}", "o") for i in range(25)]
    tumbling = split(records, WindowSpec(kind="count", size=10))
    assert [w.rows for w in tumbling] == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    sliding = split(records, WindowSpec(kind="count", size=10, step=5))
    assert [(w.rows[0], w.rows[-1]) for w in sliding] == [(1, 10), (6, 15), (11, 20), (16, 25)]
    stamped = list(reversed(_stamped(120, 1.0)))  # time windows sort by timestamp, whatever the file order
    hourly = split(stamped, WindowSpec(kind="time", duration="1h"))
    assert [len(w.records) for w in hourly] == [60, 60]
    assert all(w.start <= r.ts < w.end for w in hourly for r in w.records)
    # Sliding time windows are every aligned window that holds a record: the first starts half an hour
    # before the first record (it holds 00:00-00:30), the last ends half an hour after the newest.
    overlapping = split(stamped, WindowSpec(kind="time", duration="1h", step="30m"))
    assert [len(w.records) for w in overlapping] == [30, 60, 60, 60, 30] and overlapping[2].records[0].prompt == "p30"
    assert [w.start.strftime("%H:%M") for w in overlapping] == ["23:30", "00:00", "00:30", "01:00", "01:30"]


def test_time_windows_align_to_the_epoch_and_complete_when_closed() -> None:
    t0 = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)  # not on an hour
    records = [Record(f"p{i}", "o", ts=t0 + timedelta(minutes=i)) for i in range(100)]  # 00:10 .. 01:49
    hourly = split(records, WindowSpec(kind="time", duration="1h"), now=datetime(2026, 11, 1, 2, 0, 30, tzinfo=UTC))
    assert [(w.start.hour, w.end.hour, len(w.records)) for w in hourly] == [(0, 1, 50), (1, 2, 50)]
    assert [w.complete for w in hourly] == [True, False]  # 01:00-02:00 closes at 02:01 (grace 1m by default)
    graced = split(
        records, WindowSpec(kind="time", duration="1h", grace="10s"), now=datetime(2026, 11, 1, 2, 0, 30, tzinfo=UTC)
    )
    assert [w.complete for w in graced] == [True, True]
    daily = split(records, WindowSpec(kind="time", duration="1d"))
    assert len(daily) == 1 and daily[0].start == datetime(2026, 11, 1, tzinfo=UTC)  # midnight UTC, not the first record
    gap = split([records[0], Record("late", "o", ts=t0 + timedelta(hours=3))], WindowSpec(kind="time", duration="1h"))
    assert [len(w.records) for w in gap] == [1, 0, 0, 1]  # empty windows in between are windows too
    counted = split(records[:25], WindowSpec(kind="count", size=10))
    assert [w.complete for w in counted] == [True, True, False]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="`grace` is for `kind: time`"):
        WindowSpec(kind="count", grace="1m")


def test_window_and_reference_declarations_are_validated() -> None:
    from pydantic import ValidationError

    bad = [
        ({"kind": "time"}, "needs `duration`"),
        ({"kind": "time", "duration": "soon"}, "is not a duration"),
        ({"kind": "time", "duration": "1h", "step": "2h"}, "longer than `duration`"),
        ({"kind": "count", "size": 100, "step": 200}, "between 1 and `size`"),
        ({"kind": "count", "duration": "1h"}, "is for `kind: time`"),
    ]
    for window, message in bad:
        with pytest.raises(ValidationError, match=message):
            WindowSpec.model_validate(window)
    with pytest.raises(ValidationError, match="exactly one of"):
        MonitorSpec.model_validate({"name": "m", "reference": {"file": "a.jsonl", "training_data": "eval"}})
    with pytest.raises(ValidationError, match="a check is listed twice"):
        MonitorSpec.model_validate({"name": "m", "checks": ["domain", "domain"]})
    assert MonitorSpec.model_validate({"name": "m"}).checks == ["descriptors", "domain", "quality"]


def test_shipped_example_monitor_is_valid() -> None:

    from tuneloop.monitors.monitor_spec import load_monitor

    for path in (REPO / "examples" / "monitors").glob("*.yaml"):
        spec = load_monitor(path)
        assert spec.reference is not None and spec.model is not None, path
