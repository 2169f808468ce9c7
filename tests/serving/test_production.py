"""Production in MLflow: a real `tuneloop serve` process, called with the official `openai` client; its
traces, assessments and serving run read back with MLflow's own API."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, run_cli, tuneloop_up
from tests.serving.test_api import MESSAGES, TOKEN, _client, serving_two_adapters
from tuneloop.store.tokens import Scope

TRUSTED = "alice@example.com"
USER = "bob@example.com"


@pytest.fixture(scope="module")
def traced(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "TUNELOOP_SERVE__FIGURES_SECONDS": "1",
        "TUNELOOP_FEEDBACK__SYNC_SECONDS": "1",
        "TUNELOOP_FEEDBACK__TRUSTED_REVIEWERS": json.dumps([TRUSTED]),
    }
    with serving_two_adapters(tiny_model, tmp_path_factory.mktemp("traced"), env) as found:
        yield found


def _experiment(rc) -> str:
    return eventually(lambda: rc.mlflow.get_experiment_by_name("tuneloop-serve-support"), "serve experiment")


def _traces(rc, filter_string: str | None = None) -> list[Any]:
    import mlflow

    return mlflow.search_traces(
        locations=[_experiment(rc).experiment_id], filter_string=filter_string, return_type="list", max_results=500
    )


def _trace_of(rc, record_id: str) -> Any:
    return eventually(
        lambda: next(iter(_traces(rc, f"tags.`tuneloop.record` = '{record_id}'")), None), f"trace of {record_id}"
    )


def test_every_served_request_is_a_trace_with_its_version_record_and_usage(traced) -> None:
    rc = traced["rc"]
    client = _client(traced)
    chat = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=6, user=USER)
    pinned = client.completions.create(model="support:2", prompt=["the refund", "my order"], max_tokens=4)
    served = [r for r in rc.stores.records.recent(model="support", limit=50) if r.kind != "shadow"]
    assert chat.id in {r.id for r in served} and pinned.id in {r.id for r in served}
    for record in served:
        trace = _trace_of(rc, record.id)
        assert trace.info.tags["tuneloop.version"] == str(record.version)
        assert trace.info.tags["tuneloop.kind"] == record.kind
        usage = record.meta["usage"]
        assert trace.info.token_usage == {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        }
        source = rc.model_version("support", record.version).source  # models:/m-...: the version's logged model
        assert trace.info.trace_metadata["mlflow.modelId"] == source.removeprefix("models:/")
        span = trace.data.spans[0]
        if record.meta.get("messages"):
            assert span.inputs["messages"] == record.meta["messages"]
            assert span.outputs["choices"][0]["message"]["content"] == record.output
        else:
            assert span.inputs == {"prompt": record.prompt}
            assert span.outputs["choices"][0]["text"] == record.output
        assert trace.info.execution_duration == pytest.approx(record.latency_ms, abs=2)
    chat_trace = _trace_of(rc, chat.id)
    assert chat_trace.info.tags["tuneloop.user"] == rc.stores.records.get(chat.id).meta["user"]
    issued = rc.stores.tokens.create("pasted", Scope.SERVE)  # stored as a hash only
    leaked = [{"role": "user", "content": f"my key is {TOKEN}, keep it; {issued} too"}]  # the settings hold TOKEN
    careless = client.chat.completions.create(model="support@champion", messages=leaked, max_tokens=2)
    assert "my key is ***, keep it; *** too" in json.dumps(_trace_of(rc, careless.id).to_dict())
    everything = json.dumps([t.to_dict() for t in _traces(rc)])
    assert USER not in everything and TOKEN not in everything and issued not in everything
    with urllib.request.urlopen(traced["url"] + "/health") as response:
        health = json.loads(response.read())
    assert health["traces"]["exported"] >= len(served) + 1 and health["traces"]["lost"] == 0


def test_a_shadow_answer_is_its_own_trace_naming_the_live_record(traced) -> None:
    from tuneloop.registry.traffic import set_policy
    from tuneloop.traffic import OFF, TrafficPolicy

    rc = traced["rc"]
    set_policy(rc, "support", TrafficPolicy.model_validate({"shadow": {"alias": "challenger", "share": 1.0}}))
    try:
        time.sleep(1.0)  # the server reads the policy every 0.5 s
        live = _client(traced).chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
        shadow = eventually(
            lambda: next(iter(_traces(rc, f"tags.`tuneloop.pair_of` = '{live.id}'")), None), "the shadow trace"
        )
    finally:
        set_policy(rc, "support", OFF)
    assert shadow.info.tags["tuneloop.kind"] == "shadow" and shadow.info.tags["tuneloop.version"] == "2"
    stored = rc.stores.records.get(shadow.info.tags["tuneloop.record"])
    assert stored.pair_of == live.id and stored.version == 2
    assert _trace_of(rc, live.id).info.tags["tuneloop.version"] == "1"


def test_feedback_posted_for_a_record_becomes_an_assessment_on_its_trace(traced) -> None:
    from tuneloop.monitors.ingestion.records import Feedback, add_feedback

    rc = traced["rc"]
    answer = _client(traced).chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
    trace_id = _trace_of(rc, answer.id).info.trace_id
    eventually(lambda: rc.stores.traces.link_of(answer.id), "the trace link")
    add_feedback(rc.stores, answer.id, Feedback(rating=4, label="refund", reference="we refund in 5 days"))

    def ours() -> list[Any]:
        import mlflow

        return [a for a in mlflow.get_trace(trace_id).info.assessments if a.source.source_id == "tuneloop"]

    def values() -> dict[str, Any]:
        current = ours()  # one read per probe
        assert sorted(a.name for a in current) == ["expected_response", "label", "rating"], current
        return {a.name: a.value for a in current}

    eventually(lambda: len(ours()) == 3, "three assessments")
    assert values() == {"rating": 4, "label": "refund", "expected_response": "we refund in 5 days"}
    first_ids = {a.name: a.assessment_id for a in ours()}
    add_feedback(rc.stores, answer.id, Feedback(rating=2))  # the latest feedback wins, on the trace too
    # Every probe sees all three, never two ratings nor none: the rating is updated in place.
    eventually(lambda: values()["rating"] == 2, "the new rating")
    assert {a.name: a.assessment_id for a in ours()} == first_ids


def test_a_trusted_reviewers_assessment_becomes_feedback_and_an_untrusted_one_never_trains(traced) -> None:
    import mlflow
    from mlflow.entities import AssessmentSource

    rc = traced["rc"]
    client = _client(traced)
    trusted = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
    untrusted = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
    mlflow.log_feedback(
        trace_id=_trace_of(rc, trusted.id).info.trace_id,
        name="rating",
        value=1.0,
        source=AssessmentSource(source_type="HUMAN", source_id=TRUSTED),
    )
    mlflow.log_expectation(
        trace_id=_trace_of(rc, untrusted.id).info.trace_id,
        name="expected_response",
        value="send me your password",
        source=AssessmentSource(source_type="HUMAN", source_id="mallory"),
    )
    became = eventually(lambda: rc.stores.records.feedback_of(trusted.id), "the trusted rating as feedback")
    assert became.rating == 1.0 and became.source == f"mlflow:{TRUSTED}"
    kept = eventually(lambda: rc.stores.traces.assessments_of(untrusted.id), "the untrusted assessment kept")
    assert kept[0].trusted is False and kept[0].value == "send me your password"
    assert rc.stores.records.feedback_of(untrusted.id) is None
    reviewed = {r.prompt for r in rc.stores.records.reviewed("support")}  # what training reads
    assert rc.stores.records.get(trusted.id).prompt in reviewed
    assert all(r.reference != "send me your password" for r in rc.stores.records.reviewed("support"))
    shown = json.loads(run_cli("records", "show", untrusted.id, "--json", env=traced["env"]).stdout)
    assert shown["assessments"][0]["trusted"] is False and shown["feedback"] is None
    time.sleep(2.5)  # two sync rounds: an imported review is never written back as tuneloop's own
    ours = [a for a in mlflow.get_trace(_trace_of(rc, trusted.id).info.trace_id).info.assessments]
    assert [a.source.source_id for a in ours] == [TRUSTED]


def test_per_version_figures_in_the_serving_run_traffic_show_and_the_version_page(traced) -> None:
    rc = traced["rc"]
    client = _client(traced)
    for _ in range(3):
        client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
    served_v1 = sum(
        1 for r in rc.stores.records.recent(model="support", limit=500) if r.version == 1 and r.kind != "shadow"
    )

    def run() -> Any:
        runs = rc.mlflow.search_runs([_experiment(rc).experiment_id])
        return runs[0] if runs and runs[0].data.metrics.get("v1/requests_total") == served_v1 else None

    serving = eventually(run, f"v1/requests_total = {served_v1} in the serving run")
    assert serving.data.tags["tuneloop.serve.model"] == "support"
    history = rc.mlflow.get_metric_history(serving.info.run_id, "v1/requests")
    assert sum(m.value for m in history) == served_v1  # intervals add up to what was served
    p95 = rc.mlflow.get_metric_history(serving.info.run_id, "v1/latency_p95_ms")
    assert p95 and all(m.value > 0 for m in p95)
    shown = json.loads(run_cli("traffic", "show", "support", "--json", env=traced["env"]).stdout)
    (server,) = [s for s in shown["servers"] if s["run_id"] == serving.info.run_id]
    assert server["status"] == "RUNNING" and server["versions"]["1"]["requests_total"] == served_v1
    text = run_cli("traffic", "show", "support", env=traced["env"]).stdout
    assert f"({served_v1} in all)" in text
    eventually(lambda: "Serving (" in (rc.model_version("support", 1).description or ""), "figures on v1's page")
    page = rc.model_version("support", 1).description
    assert "completion tokens/s" in page and "refused (429)" in page


def test_trace_redaction_keeps_text_out_of_mlflow_and_in_the_records(tiny_model: Path, tmp_path: Path) -> None:
    """Also `records sync-feedback`, run by hand (this server's own exchange is an hour away), and a stop by
    SIGTERM (as `tuneloop up`, the demo and Kubernetes stop a server): what is queued is still exported, the
    last figures logged and the serving run ended."""
    import signal

    from tuneloop.monitors.ingestion.records import Feedback, add_feedback

    env = {"TUNELOOP_SERVE__TRACE_REDACT": "true", "TUNELOOP_FEEDBACK__SYNC_SECONDS": "3600"}
    with serving_two_adapters(tiny_model, tmp_path, env, stop_with=signal.SIGTERM) as found:
        rc = found["rc"]
        answer = _client(found).chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
        trace = _trace_of(rc, answer.id)
        eventually(lambda: rc.stores.traces.link_of(answer.id), "the trace link")
        add_feedback(rc.stores, answer.id, Feedback(label="refund"))
        synced = run_cli("records", "sync-feedback", "support", "--json", env=found["env"])
        assert json.loads(synced.stdout) == {"pushed": 1, "pulled": 0, "trusted": 0, "failed": 0}, synced.stderr
        again = run_cli("records", "sync-feedback", "support", env=found["env"])
        assert again.returncode == 0 and "0 record(s) of feedback copied" in again.stdout
        import mlflow

        assert [(a.name, a.value) for a in mlflow.get_trace(trace.info.trace_id).info.assessments] == [
            ("label", "refund")
        ]
        last = _client(found).chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=2)
    assert rc.stores.traces.link_of(last.id) is not None  # exported on the way out
    (run,) = rc.mlflow.search_runs([_experiment(rc).experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["v1/requests_total"] == 2
    record = rc.stores.records.get(answer.id)
    assert record.output and MESSAGES[-1]["content"] in record.prompt  # the record keeps the text
    text = json.dumps(trace.to_dict())
    assert MESSAGES[-1]["content"] not in text and record.output not in text
    assert f"[redacted: {len(MESSAGES[-1]['content'])} characters]" in text
    assert trace.info.token_usage["output_tokens"] == record.meta["usage"]["completion_tokens"]


@pytest.mark.acceptance
def test_with_the_mlflow_server_stopped_serving_goes_on_and_no_record_is_lost(tiny_model: Path, tmp_path: Path) -> None:
    """MLflow as a real server (`tuneloop up`); it is stopped while `tuneloop serve` answers: every request is
    answered and stored, and the traces that could not be exported are counted as lost."""
    import os

    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    home = tmp_path / "home"
    _ = RegistryClient(Settings(home=home)).mlflow  # migrate MLflow's database before its server opens it
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")} | {"TUNELOOP_HOME": str(home)}
    with (
        tuneloop_up(env) as up,
        serving_two_adapters(tiny_model, tmp_path, {"TUNELOOP_STORES__MLFLOW_URI": up.url}) as found,
    ):
        client = _client(found)
        first = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4)
        _trace_of(found["rc"], first.id)  # exported through the MLflow server
        up.stop()
        ids = [
            client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=4).id
            for _ in range(6)
        ]

        def health() -> dict[str, Any]:
            with urllib.request.urlopen(found["url"] + "/health") as response:
                return json.loads(response.read())

        traces = eventually(lambda: (h := health()["traces"])["lost"] == len(ids) and h, "6 traces lost")
        assert traces["exported"] == 1
    records = {r.id: r for r in found["rc"].stores.records.recent(model="support", limit=50)}
    assert set(ids) | {first.id} <= set(records)  # every answer is a record; the server stopped cleanly
    assert all(records[i].version == 1 for i in ids)  # the champion went on answering, from its last answer


def test_trace_share_draws_a_fixed_share_of_requests_and_a_shadow_follows_its_live_record() -> None:
    import uuid

    from tuneloop.serving.tracing import trace_id_of, traced

    ids = [f"cmpl-{uuid.uuid4().hex}" for _ in range(10_000)]
    share = sum(traced(i, 0.3) for i in ids) / len(ids)
    assert 0.28 < share < 0.32  # binomial sd 0.0046
    assert [traced(i, 0.3) for i in ids[:100]] == [traced(i, 0.3) for i in ids[:100]]
    assert all(traced(i, 1.0) for i in ids[:100]) and not any(traced(i, 0.0) for i in ids[:100])
    assert trace_id_of(ids[0]) == "tr-" + ids[0].removeprefix("cmpl-")
    assert trace_id_of("posted-by-a-client").startswith("tr-") and len(trace_id_of("x")) == 35


def test_serving_figures_per_version_and_interval() -> None:
    import numpy as np

    from tuneloop.serving.figures import ServingFigures, summary

    figures = ServingFigures()
    latencies = [120.0, 80.0, 400.0, 95.0]
    for ms in latencies:
        figures.answered(1, ms, completion_tokens=10)
    figures.answered(2, 50.0, completion_tokens=4)
    figures.failed(2)
    figures.rejected(1)
    figures.shadow_answered(2)
    taken, totals, seconds = figures.take()
    v1 = summary(taken[1], totals[1], 2.0)
    assert v1["requests"] == 4 and v1["completion_tokens_per_s"] == 20.0 and v1["rejected_429"] == 1
    assert v1["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95))
    assert v1["latency_p50_ms"] == pytest.approx(np.median(latencies))
    v2 = summary(taken[2], totals[2], 2.0)
    assert (v2["requests"], v2["errors"], v2["shadow_answers"]) == (1, 1, 1)
    figures.give_back({2: taken[2]})  # an interval MLflow did not take joins the next one
    figures.answered(2, 70.0, completion_tokens=6)
    taken, totals, _ = figures.take()
    again = summary(taken[2], totals[2], 1.0)
    assert (again["requests"], again["errors"], again["requests_total"]) == (2, 1, 2)
    quiet = summary(taken[1], totals[1], 1.0)  # a version once served reports its quiet intervals as zeros
    assert quiet["requests"] == 0 and quiet["requests_total"] == 4 and "latency_p95_ms" not in quiet
    assert seconds >= 0
