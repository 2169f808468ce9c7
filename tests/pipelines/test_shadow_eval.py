"""Shadow evaluation on stored (live, shadow) pairs: deltas against an independent computation, the
decision quality of `shadow_refusal_rate_delta_lo <= 0.01` over seeded trials, and shadow gates that fail
(never skip) without enough pairs."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli
from tests.registry_helpers import make_versions
from tests.shadow_helpers import ANSWERS, REFUSAL, store_pairs


def _setup(rc, n_versions: int = 2) -> None:
    from tuneloop.registry.promotion import promote

    make_versions(rc, "support", [{}] * n_versions)
    promote(rc, "support", 1, "champion", force=True, reason="holder")
    promote(rc, "support", 2, "challenger", force=True, reason="the one shadowing")


def test_shadow_deltas_equal_an_independent_computation_and_land_on_the_challenger(sqlite_rc) -> None:
    from rouge_score import rouge_scorer

    from tuneloop.pipelines.evaluation.shadow import evaluate_shadow
    from tuneloop.registry.version_metrics import metrics_of

    rc = sqlite_rc
    _setup(rc)
    rng = random.Random(5)
    rows, references = [], {}
    for i in range(60):
        live = REFUSAL if rng.random() < 0.1 else rng.choice(ANSWERS)
        shadow = REFUSAL if rng.random() < 0.3 else rng.choice(ANSWERS)
        rows.append((f"question {i}", {1: live, 2: shadow}))
        if i % 3 == 0:
            references[i] = {"reference": rng.choice(ANSWERS)}
    references[1] = {"label": rows[1][1][2]}  # the challenger's answer is the label, the champion's is not
    rows[1][1][1] = REFUSAL if rows[1][1][2] != REFUSAL else ANSWERS[0]
    store_pairs(rc, rows, feedback=references)

    result = evaluate_shadow(rc, "support")
    assert (result.champion_version, result.challenger_version, result.pairs) == (1, 2, 60)
    by_name = {c.name: c for c in result.comparisons}
    refusals = {v: [float(answers[v] == REFUSAL) for _, answers in rows] for v in (1, 2)}
    expected = sum(refusals[2]) / 60 - sum(refusals[1]) / 60
    refusal = by_name["refusal_rate"]
    assert refusal.delta == pytest.approx(expected) and refusal.low <= refusal.delta <= refusal.high
    assert refusal.low < refusal.high  # a real interval, from resampled pairs

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scored = [i for i in references if "reference" in references[i]]
    rouge = {
        v: [scorer.score(references[i]["reference"], rows[i][1][v])["rougeL"].fmeasure for i in scored] for v in (1, 2)
    }
    assert by_name["rougeL"].pairs == len(scored)
    assert by_name["rougeL"].delta == pytest.approx(sum(rouge[2]) / len(scored) - sum(rouge[1]) / len(scored))
    assert (by_name["accuracy"].pairs, by_name["accuracy"].delta) == (1, 1.0)
    same = sum(a[1] == a[2] for _, a in rows) / 60
    assert result.agreement["exact_match"] == pytest.approx(same)

    written = metrics_of(rc.model_version("support", 2))
    assert written["shadow_pairs"] == 60 and written["shadow_refusal_rate_delta"] == pytest.approx(expected)
    assert written["shadow_refusal_rate_delta_lo"] == pytest.approx(refusal.low)
    assert "shadow_pairs" not in metrics_of(rc.model_version("support", 1))
    run = rc.mlflow.get_run(result.run_id)
    assert run.data.tags["tuneloop.shadow.challenger"] == "support:2"
    assert run.data.metrics["shadow_refusal_rate_delta_hi"] == pytest.approx(refusal.high)


def test_the_refusal_gate_refuses_a_worse_challenger_and_passes_an_equal_one_in_19_of_20_trials(sqlite_rc) -> None:
    """Champion refusal rate 10%, 600 pairs a trial: a challenger refusing 20% is refused, an equal one passes."""
    from tuneloop.pipelines.evaluation.shadow import evaluate_shadow
    from tuneloop.registry.gates import evaluate, parse_policy
    from tuneloop.store.tables import records

    rc = sqlite_rc
    _setup(rc, n_versions=3)
    gates = parse_policy(["shadow_refusal_rate_delta_lo <= 0.01"])
    refused_worse = passed_equal = 0
    for trial in range(20):
        rng = random.Random(trial)

        def answer(rate: float) -> str:
            return REFUSAL if rng.random() < rate else rng.choice(ANSWERS)  # noqa: B023 - used in this trial only

        store_pairs(rc, [(f"q{trial}-{i}", {1: answer(0.1), 2: answer(0.2), 3: answer(0.1)}) for i in range(600)])
        for version in (2, 3):
            evaluate_shadow(rc, "support", challenger=version, seed=trial)
            (check,) = evaluate(rc, rc.model_version("support", version), gates)
            if version == 2:
                refused_worse += check.status == "failed"
            else:
                passed_equal += check.status == "passed"
        with rc.stores.engine.begin() as conn:
            conn.execute(sa.delete(records))  # the next trial's pairs alone
    assert refused_worse >= 19 and passed_equal >= 19, (refused_worse, passed_equal)


def test_a_shadow_gate_with_too_few_pairs_fails_naming_the_count(sqlite_rc, tmp_path) -> None:
    from tuneloop.pipelines.evaluation.shadow import evaluate_shadow
    from tuneloop.registry.gates import evaluate, parse_policy
    from tuneloop.registry.traffic import set_policy
    from tuneloop.traffic import TrafficPolicy

    rc = sqlite_rc
    _setup(rc)
    gates = parse_policy(["shadow_refusal_rate_delta_lo <= 0.01", "shadow_pairs >= 20"])
    (missing, _) = evaluate(rc, rc.model_version("support", 2), gates)
    assert missing.status == "failed" and "tuneloop eval shadow support" in missing.reason

    store_pairs(rc, [(f"q{i}", {1: ANSWERS[i % 3], 2: ANSWERS[i % 3]}) for i in range(30)])
    evaluate_shadow(rc, "support")
    few, pairs = evaluate(rc, rc.model_version("support", 2), gates)
    assert few.status == "failed" and "from 30 (live, shadow) pair(s)" in few.reason and "needs 100" in few.reason
    assert pairs.status == "passed"  # the pair count itself is an ordinary threshold
    set_policy(rc, "support", TrafficPolicy.model_validate({"shadow": {"share": 0.5, "min_pairs": 25}}))
    enough, _ = evaluate(rc, rc.model_version("support", 2), gates)
    assert enough.status == "passed", enough

    result = run_cli("eval", "shadow", "support", "--dry-run", "--json", env={"TUNELOOP_HOME": str(rc.settings.home)})
    assert result.returncode == 0, result.stderr
    assert '"shadow_pairs": 30.0' in result.stdout
    home = {"TUNELOOP_HOME": str(rc.settings.home)}
    none = run_cli("eval", "shadow", "support", "--champion", "2", "--challenger", "1", env=home)
    assert none.returncode != 0 and "no request of `support`" in none.stderr and "traffic set" in none.stderr
    itself = run_cli("eval", "shadow", "support", "--challenger", "1", env=home)
    assert itself.returncode != 0 and "compared with itself" in itself.stderr and "--champion" in itself.stderr


def test_language_share_counts_answers_in_the_prompts_language(sqlite_rc) -> None:
    from tuneloop.monitors.drift.descriptors import language
    from tuneloop.pipelines.evaluation.shadow import evaluate_shadow

    assert language("Wo ist meine Bestellung? Sie sollte gestern ankommen.") == "de"
    assert language("I have sent a refund for your order.") == "en"
    assert language("Où est ma commande? Je ne la trouve pas.") == "fr"
    assert language("12345 !!") == "unknown"

    rc = sqlite_rc
    _setup(rc)
    german = "Wo ist meine Bestellung {}? Sie sollte gestern ankommen."
    english_answer, german_answer = (
        "I have sent a refund for your order.",
        "Ihre Bestellung ist unterwegs und kommt bald.",
    )
    rows = [(german.format(i), {1: english_answer, 2: german_answer}) for i in range(8)]
    rows += [(f"Where is the order {i}? It is late.", {1: english_answer, 2: english_answer}) for i in range(8)]
    store_pairs(rc, rows)
    result = evaluate_shadow(rc, "support", record=False)
    share = next(c for c in result.comparisons if c.name == "language_share")
    assert (share.champion, share.challenger, share.delta) == (0.5, 1.0, 0.5)
    assert share.low > 0  # every German pair went the challenger's way: a real, one-sided improvement
