"""The ingest API on a real uvicorn server: auth, limits, idempotency, feedback, junk, load with a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, run_cli

TOKEN = "test-token-0123456789"


@dataclass
class Server:
    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tuneloop", "monitor", "serve", "--port", port],
            env=self.env,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        import httpx

        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the ingest server exited"
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the ingest server did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def count(self) -> tuple[int, int]:
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{self.home / 'tuneloop.db'}")
        with engine.connect() as conn:
            total, distinct = conn.execute(sa.text("SELECT count(*), count(DISTINCT id) FROM records")).one()
        engine.dispose()
        return int(total), int(distinct)


@pytest.fixture
def server(tiny_model: Path, tmp_path: Path) -> Iterator[Server]:
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings
    from tuneloop.store.engine import dispose_engines

    home = tmp_path / "home"
    import_base(RegistryClient(Settings(home=home)), "tiny", str(tiny_model))
    dispose_engines()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env.update(
        TUNELOOP_HOME=str(home),
        TUNELOOP_INGEST__TOKENS=json.dumps([TOKEN]),
        TUNELOOP_INGEST__MAX_BODY_BYTES="2000000",
        TUNELOOP_INGEST__MAX_TEXT_CHARS="5000",
    )
    srv = Server(url=f"http://127.0.0.1:{free_port()}", home=home, env=env)
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


def _post(
    server: Server, body: object | bytes, token: str | None = TOKEN, key: str | None = None, path: str = "/v1/records"
):
    import httpx

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30)


def _record(**extra: object) -> dict:
    return {
        "model": "tiny@champion" if extra.pop("alias", False) else "tiny:1",
        "prompt": "where is my order",
        "output": "it ships tomorrow",
        **extra,
    }


def test_records_feedback_and_idempotent_retries(server: Server) -> None:
    one = _post(server, _record(id="r-1", latency_ms=12.5, metadata={"region": "eu"}))
    assert one.status_code == 201 and one.json()["ids"] == ["r-1"], one.text
    batch = {"records": [_record(id=f"b-{i}", prediction="shipping", feedback={"label": "shipping"}) for i in range(5)]}
    first = _post(server, batch, key="batch-1")
    assert first.status_code == 201 and first.json()["stored"] == 5
    replay = _post(server, batch, key="batch-1")  # a retry of an acknowledged request
    assert replay.status_code == 200 and replay.json()["replayed"] and replay.json()["ids"] == first.json()["ids"]
    again = _post(server, batch)  # the same record ids without the key: skipped as duplicates
    assert again.json() == {**again.json(), "stored": 0, "duplicates": 5}
    assert server.count() == (6, 6)

    later = _post(server, {"rating": 4, "reference": "it ships on Friday"}, path="/v1/records/r-1/feedback")
    assert later.status_code == 201
    assert _post(server, {"rating": 1}, path="/v1/records/nope/feedback").status_code == 404

    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{server.home / 'tuneloop.db'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT model, version, prediction, latency_ms, meta FROM records WHERE id='r-1'")
        ).one()
        fb = conn.execute(sa.text("SELECT rating, reference FROM feedback WHERE record_id='r-1'")).one()
        labels = conn.execute(sa.text("SELECT count(*) FROM feedback WHERE label='shipping'")).scalar()
    engine.dispose()
    assert tuple(row) == ("tiny", 1, "it ships tomorrow", 12.5, '{"region": "eu"}')  # prediction defaults to the output
    assert tuple(fb) == (4.0, "it ships on Friday") and labels == 5


def test_the_api_takes_feedback_flat_or_nested_as_the_cli_and_backtest_do(server: Server) -> None:
    from tests.test_new_user import ROWS

    stored = _post(server, {"records": ROWS})
    assert stored.status_code == 201, stored.text
    refused = _post(server, {**ROWS[0], "id": "x", "lable": "refund"})
    assert refused.status_code == 422 and "`lable`: unknown field" in refused.text
    clash = _post(server, {**ROWS[0], "id": "y", "feedback": {"label": "cancel"}})
    assert clash.status_code == 422 and "`label` and `feedback.label` disagree" in clash.text
    assert _post(server, {"reference_answer": "r2"}, path="/v1/records/flat/feedback").status_code == 201

    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{server.home / 'tuneloop.db'}")
    with engine.connect() as conn:
        rows = set(conn.execute(sa.text("SELECT record_id, label, rating, reference FROM feedback")).all())
    engine.dispose()
    assert rows == {("flat", None, None, "r2"), ("nested", "refund", 4.0, "r"), ("mixed", "refund", 4.0, "r")}
    assert server.count() == (3, 3)  # nothing of the refused requests


def _bad_cases() -> list[tuple[str, object | bytes, dict, int, str]]:
    ok = _record()
    return [
        ("malformed JSON", b'{"model": "tiny:1", "prompt": ', {}, 400, "not valid JSON"),
        ("missing field", {"model": "tiny:1", "prompt": "x"}, {}, 422, "`output`: Field required"),
        ("mistyped field", {**ok, "prompt": 42}, {}, 422, "`prompt`: Input should be a valid string"),
        ("unknown field", {**ok, "colour": "red"}, {}, 422, "`colour`: unknown field"),
        ("oversize body", {"records": [{**ok, "prompt": "x" * 4000}] * 600}, {}, 413, "over the limit"),
        ("oversize field", {**ok, "output": "y" * 6000}, {}, 422, "`output` is 6,000 characters"),
        ("invalid UTF-8", b'{"model": "tiny:1", "prompt": "caf\xe9", "output": "x"}', {}, 400, "not valid UTF-8"),
        ("unknown model", {**ok, "model": "nosuch:1"}, {}, 404, "unknown model `nosuch:1`"),
        ("unknown version", {**ok, "model": "tiny:9"}, {}, 404, "unknown model `tiny:9`"),
        ("bad model ref", {**ok, "model": "tiny"}, {}, 422, "NAME@ALIAS or NAME:VERSION"),
        ("no token", ok, {"token": None}, 401, "missing bearer token"),
        ("wrong token", ok, {"token": "guess"}, 401, "invalid or revoked token"),
        ("one bad record in a batch", {"records": [ok, {**ok, "latency_ms": -1}]}, {}, 422, "records[1]: `latency_ms`"),
        ("not an object", [1, 2], {}, 422, "must be a JSON object"),
    ]


@pytest.mark.parametrize(("case", "body", "kwargs", "status", "reason"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_gets_4xx_with_a_reason_and_stores_nothing(
    server: Server, case: str, body: object, kwargs: dict, status: int, reason: str
) -> None:
    response = _post(server, body, **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"], response.json()
    assert server.count() == (0, 0)


def test_odd_but_valid_text_is_stored(server: Server) -> None:
    odd = [
        _record(prompt="refund " * 300, output="refund"),
        _record(prompt="🙂🙂🙂", output="🎉"),
        _record(output=""),
        _record(prompt="Grüße aus Zürich — 東京", output="\u200b"),
    ]
    response = _post(server, {"records": odd})
    assert response.status_code == 201 and server.count() == (4, 4)


def test_generated_junk_never_crashes_the_endpoint(server: Server) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    junk_records = st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["tiny:1", "tiny@champion", "nosuch:1", "tiny", ""]) | st.text(max_size=10),
            "prompt": st.text(max_size=50) | st.integers(),
            "output": st.text(max_size=50) | st.none(),
            "latency_ms": st.floats() | st.text(max_size=4),
            "timestamp": st.text(max_size=30),
            "metadata": json_values,
            "feedback": json_values,
            "id": st.text(max_size=80),
        },
    )
    bodies = (
        st.binary(max_size=200)
        | json_values.map(lambda v: json.dumps(v).encode())
        | junk_records.map(lambda r: json.dumps(r).encode())
        | st.lists(junk_records, max_size=5).map(lambda rs: json.dumps({"records": rs}).encode())
    )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def throw(body: bytes) -> None:
        before = server.count()[0]
        response = _post(server, body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"] and server.count()[0] == before

    throw()
    assert _post(server, _record()).status_code == 201  # still serving


def test_stored_tokens_are_hashed_scoped_and_revocable(server: Server) -> None:
    created = run_cli("tokens", "create", "ci", "--scope", "ingest", "--json", env=server.env)
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    serving = json.loads(run_cli("tokens", "create", "app", "--scope", "serve", "--json", env=server.env).stdout)
    assert token.encode() not in (server.home / "tuneloop.db").read_bytes()  # only its sha256 is stored
    assert _post(server, _record(), token=token).status_code == 201
    refused = _post(server, _record(), token=serving["token"])  # a caller of the model may not post feedback
    assert refused.status_code == 403 and "scope `ingest`" in refused.json()["error"], refused.text
    listed = json.loads(run_cli("tokens", "list", "--json", env=server.env).stdout)
    assert [(t["name"], t["scope"], t["revoked_at"]) for t in listed] == [
        ("app", "serve", None),
        ("ci", "ingest", None),
    ]
    again = run_cli("tokens", "create", "ci", "--scope", "serve", env=server.env)
    assert again.returncode != 0 and "a token named `ci` exists" in again.stderr
    assert run_cli("tokens", "revoke", "ci", env=server.env).returncode == 0
    time.sleep(6)  # the API re-reads stored tokens every 5 s
    assert _post(server, _record(), token=token).status_code == 401
    assert server.count() == (1, 1)


def test_an_outside_server_may_name_the_version_that_answered(server: Server) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{server.home / 'mlflow.db'}")
    second = client.create_model_version("tiny", source=client.get_model_version("tiny", "1").source)
    client.set_registered_model_alias("tiny", "champion", second.version)  # v2 holds the alias; v1 answered
    named = _post(server, _record(id="v-1", alias=True, version=1))
    assert named.status_code == 201, named.text
    unknown = _post(server, _record(id="v-9", alias=True, version=9))
    assert unknown.status_code == 404 and "has no version 9" in unknown.json()["error"]
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{server.home / 'tuneloop.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, version, alias, kind, pair_of FROM records")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("v-1", 1, "champion", "live", None)]


def test_file_ingest_is_all_or_nothing(server: Server, tmp_path: Path) -> None:
    good = tmp_path / "records.jsonl"
    good.write_text("".join(json.dumps(_record(id=f"f-{i}")) + "\n" for i in range(3)))
    result = run_cli("monitor", "ingest", str(good), "--json", env=server.env)
    assert result.returncode == 0 and json.loads(result.stdout)["stored"] == 3
    bad = tmp_path / "records.csv"
    bad.write_text("model,prompt,output,latency_ms,feedback_label\ntiny:1,hi,hello,3,greeting\ntiny:1,hi,hello,fast,\n")
    refused = run_cli("monitor", "ingest", str(bad), env=server.env)
    assert refused.returncode == 1 and f"{bad}:3: `latency_ms`" in refused.stderr
    assert server.count() == (3, 3)


def test_python_client_batches_in_the_background(server: Server) -> None:
    from tuneloop.monitors.ingestion.client import IngestClient

    client = IngestClient(server.url, TOKEN, batch_size=50, flush_interval_s=0.1)
    start = time.perf_counter()
    ids = [client.log(**_record(prompt=f"question {i}")) for i in range(500)]
    assert time.perf_counter() - start < 0.5  # the caller never waits for the network
    assert client.flush(60)
    client.close()
    assert client.stats["sent"] == 500 and client.stats["failed"] == 0 and len(set(ids)) == 500
    assert server.count() == (500, 500)


@pytest.mark.acceptance
def test_load_with_aborted_requests_and_a_server_restart_stores_every_record_once(server: Server) -> None:
    import httpx

    clients, per_client, batch = 20, 5000, 250
    acknowledged = [0] * clients
    restarted = threading.Event()

    def abort_mid_flight(body: bytes, key: str) -> None:
        """Send headers and half the body, then drop the connection."""
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            head = (
                f"POST /v1/records HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])

    def run_client(n: int) -> None:
        http = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        for b in range(per_client // batch):
            records = [_record(id=f"c{n}-{b}-{i}", prompt=f"client {n} batch {b} row {i}") for i in range(batch)]
            body, key = json.dumps({"records": records}).encode(), uuid.uuid4().hex
            if b % 7 == 3:
                try:
                    abort_mid_flight(body, key)
                except OSError:
                    pass
            for attempt in range(200):
                try:
                    response = http.post(
                        server.url + "/v1/records",
                        content=body,
                        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
                    )
                    if response.status_code in (200, 201):
                        acknowledged[n] += batch
                        break
                    assert response.status_code >= 500, response.text
                except httpx.HTTPError:
                    pass
                time.sleep(min(2.0, 0.05 * 2**attempt))
            else:
                raise AssertionError("a batch was never acknowledged")
        http.close()

    threads = [threading.Thread(target=run_client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    while sum(acknowledged) < 30_000:
        time.sleep(0.1)
    acknowledged_before_kill = sum(acknowledged)
    server.kill(signal.SIGKILL)
    assert server.count()[0] >= acknowledged_before_kill  # nothing acknowledged was lost
    server.start()
    restarted.set()
    for t in threads:
        t.join(600)
    assert sum(acknowledged) == clients * per_client
    assert server.count() == (100_000, 100_000)
