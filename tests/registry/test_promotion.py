"""Gated promotion, rollback, history, unaudited moves and the append-only audit trail."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.registry_helpers import make_versions
from tuneloop.errors import ConfigError, Conflict, GateFailed, NotFound, UsageError
from tuneloop.registry import gates
from tuneloop.registry.promotion import history, promote, rollback


def test_absolute_gate_refuses_and_moves_nothing(rc) -> None:
    v1, v2 = make_versions(rc, "m", [{"accuracy": 0.9}, {"accuracy": 0.4}])
    gates.set_policy(rc, "m", ["accuracy >= 0.8"])
    promote(rc, "m", v1, "champion")
    with pytest.raises(GateFailed) as err:
        promote(rc, "m", v2, "champion")
    assert "accuracy >= 0.8" in err.value.message and "0.4" in err.value.message
    assert rc.mlflow.get_model_version_by_alias("m", "champion").version in (v1, str(v1))
    moves, broken = history(rc, "m")
    assert [(m.from_version, m.to_version) for m in moves] == [(None, v1)] and broken == []


def test_relative_gate_reads_the_alias_holder(rc) -> None:
    v1, v2, v3 = make_versions(rc, "m", [{"rougeL": 0.50}, {"rougeL": 0.495}, {"rougeL": 0.48}])
    gates.set_policy(rc, "m", ["rougeL >= champion - 0.01"])
    with pytest.raises(GateFailed) as no_evidence:  # no holder, no base: no gate can be evaluated
        promote(rc, "m", v1, "champion")
    assert (
        "no evidence" in no_evidence.value.message and "skipped rougeL >= champion - 0.01" in no_evidence.value.message
    )
    assert "tuneloop eval" in (no_evidence.value.hint or "") and "--force --reason" in (no_evidence.value.hint or "")
    assert history(rc, "m")[0] == []  # nothing moved
    first = promote(rc, "m", v1, "champion", force=True, reason="first champion: nothing to compare with")
    assert [g.status for g in first.gates] == ["skipped"] and first.move is not None and first.move.forced
    assert "no holder of `champion`" in first.gates[0].reason
    second = promote(rc, "m", v2, "champion")  # 0.495 >= 0.50 - 0.01
    assert second.gates[0].status == "passed" and second.gates[0].threshold == pytest.approx(0.49)
    assert second.gates[0].compared_with == f"champion@v{v1}"
    with pytest.raises(GateFailed):
        promote(rc, "m", v3, "champion")  # 0.48 < 0.495 - 0.01
    moves, _ = history(rc, "m")
    assert moves[0].gates[0].status == "skipped"  # the skip is in the audit entry


def test_relative_gate_without_holder_uses_the_base(rc) -> None:
    (b1,) = make_versions(rc, "base", [{"perplexity": 10.0}])
    a1, a2 = make_versions(rc, "ad", [{"perplexity": 10.4}, {"perplexity": 10.6}], kind="adapter", base=("base", b1))
    gates.set_policy(rc, "ad", ["perplexity <= champion * 1.05"])
    with pytest.raises(GateFailed, match="10.6"):
        promote(rc, "ad", a2, "champion")  # 10.6 > 10.0 * 1.05 (the base's value)
    result = promote(rc, "ad", a1, "champion")
    assert result.gates[0].compared_with == f"base base@v{b1}"


def test_missing_candidate_metric_fails_the_gate(rc) -> None:
    (v1,) = make_versions(rc, "m", [{}])
    gates.set_policy(rc, "m", ["f1_macro > 0.5"])
    with pytest.raises(GateFailed, match="has no `f1_macro` result"):
        promote(rc, "m", v1, "champion")


def test_force_needs_a_reason_and_is_recorded(rc) -> None:
    (v1,) = make_versions(rc, "m", [{"accuracy": 0.1}])
    gates.set_policy(rc, "m", ["accuracy >= 0.8"])
    with pytest.raises(UsageError, match="--reason"):
        promote(rc, "m", v1, "champion", force=True)
    result = promote(rc, "m", v1, "champion", force=True, reason="hotfix for incident 42")
    assert result.move.forced and result.move.reason == "hotfix for incident 42"
    assert result.gates[0].status == "failed"
    moves, _ = history(rc, "m")
    assert moves[-1].forced and moves[-1].gates[0].status == "failed"


def test_rollback_returns_to_previous_holder(rc) -> None:
    v1, v2 = make_versions(rc, "m", [{}, {}])
    with pytest.raises(NotFound):
        rollback(rc, "m", "champion")
    promote(rc, "m", v1, "champion")
    with pytest.raises(NotFound, match="no previous holder"):
        rollback(rc, "m", "champion")
    promote(rc, "m", v2, "champion")
    result = rollback(rc, "m", "champion")
    assert (result.move.from_version, result.move.to_version, result.move.kind) == (v2, v1, "rollback")
    assert int(rc.mlflow.get_model_version_by_alias("m", "champion").version) == v1


def test_alias_moved_outside_tuneloop_is_recorded_as_unaudited(rc) -> None:
    v1, v2 = make_versions(rc, "m", [{}, {}])
    promote(rc, "m", v1, "champion")
    rc.mlflow.set_registered_model_alias("m", "champion", str(v2))  # as the MLflow UI would
    rc.mlflow.set_registered_model_alias("m", "staging", str(v1))
    moves, broken = history(rc, "m")
    unaudited = [(m.alias, m.from_version, m.to_version) for m in moves if m.kind == "unaudited"]
    assert sorted(unaudited) == [("champion", v1, v2), ("staging", None, v1)]
    assert broken == []
    rc.mlflow.delete_registered_model_alias("m", "staging")
    result = promote(rc, "m", v1, "champion")
    assert [(m.alias, m.to_version) for m in result.unaudited] == [("staging", None)]
    assert result.move.from_version == v2


def test_refuses_foreign_versions_unknown_models_and_bad_aliases(rc) -> None:
    make_versions(rc, "a", [{}])
    make_versions(rc, "b", [{}, {}])
    with pytest.raises(Conflict, match="belongs to model `b`"):
        promote(rc, "a", "b:2", "champion")
    with pytest.raises(NotFound, match="no version 2"):
        promote(rc, "a", 2, "champion")
    with pytest.raises(NotFound, match="no registered model `zzz`"):
        promote(rc, "zzz", 1, "champion")
    with pytest.raises(UsageError):
        promote(rc, "a", 1, "latest")
    moves, _ = history(rc, "a")
    assert moves == [] and rc.mlflow.get_registered_model("a").aliases == {}


def test_gate_policy_with_unknown_metric_is_refused_whole(rc) -> None:
    make_versions(rc, "m", [{}])
    gates.set_policy(rc, "m", ["accuracy >= 0.5"])
    with pytest.raises(ConfigError) as err:
        gates.set_policy(rc, "m", ["acuracy >= 0.5", "rougeL >=", "bleu > 10"])
    assert "unknown metric `acuracy`" in err.value.message and "`rougeL >=` is not a gate" in err.value.message
    assert [g.text for g in gates.policy_of(rc, "m")] == ["accuracy >= 0.5"]  # unchanged


def test_audit_log_is_append_only_and_tamper_evident(rc) -> None:
    from tuneloop.store.tables import audit_log

    v1, v2 = make_versions(rc, "m", [{}, {}])
    promote(rc, "m", v1, "champion")
    promote(rc, "m", v2, "champion")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), rc.stores.engine.begin() as conn:
        conn.execute(audit_log.update().values(reason="nothing to see"))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), rc.stores.engine.begin() as conn:
        conn.execute(audit_log.delete())
    # Going around the trigger (a DBA with DDL rights) breaks the hash chain visibly.
    with rc.stores.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
            conn.execute(sa.text("UPDATE audit_log SET to_version = 99 WHERE id = (SELECT min(id) FROM audit_log)"))
            conn.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_log_no_update"))
            conn.execute(sa.text("UPDATE audit_log SET to_version = 99 WHERE id = (SELECT min(id) FROM audit_log)"))
    first_id = min(m.id for m in history(rc, "m")[0])
    with rc.stores.transaction() as tx:
        assert rc.stores.audit.verify_chain(tx, "m") == [first_id]


def test_audit_entries_are_mirrored_into_mlflow(rc) -> None:
    from tuneloop.names import Experiment

    v1, v2 = make_versions(rc, "m", [{"accuracy": 0.9}, {"accuracy": 0.95}])
    gates.set_policy(rc, "m", ["accuracy >= 0.5", "accuracy >= champion"])  # the absolute gate is the first evidence
    promote(rc, "m", v1, "champion")
    promote(rc, "m", v2, "champion")
    exp = rc.mlflow.get_experiment_by_name(f"{rc.settings.experiment_prefix}-{Experiment.AUDIT}")
    runs = rc.mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["tuneloop.audit.to_version"] for r in runs] == [str(v1), str(v2)]
    assert runs[1].data.tags["tuneloop.audit.from_version"] == str(v1)
    assert runs[1].data.tags["tuneloop.audit.kind"] == "promote"


def test_registering_a_version_also_detects_unaudited_moves(rc, tiny_model) -> None:
    from tuneloop.registry.base_models import import_base

    import_base(rc, "tiny", str(tiny_model))
    rc.mlflow.set_registered_model_alias("tiny", "champion", "1")  # behind tuneloop's back
    import_base(rc, "tiny", str(tiny_model))  # the next registry operation

    with rc.stores.transaction() as tx:
        moves = rc.stores.audit.entries(tx, "tiny")
    assert [(m.kind, m.alias, m.to_version) for m in moves] == [("unaudited", "champion", 1)]
