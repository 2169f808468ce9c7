"""`tuneloop serve` as a real process, called with the official `openai` client (max_retries=0: the
client retries 429 and 5xx by itself, which would hide failures)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_tiny_adapter, free_port, run_cli
from tests.serving.test_batcher import _alone, _base

TOKEN = "serve-test-token"
INGEST_TOKEN = "ingest-test-token"
MESSAGES = [{"role": "system", "content": "help"}, {"role": "user", "content": "what is the refund of my order"}]


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """`support` v1 (champion) and v2 (challenger), two LoRA adapters on one tiny base, served."""
    with serving_two_adapters(tiny_model, tmp_path_factory.mktemp("serve")) as found:
        yield found


@contextlib.contextmanager
def serving_two_adapters(
    tiny_model: Path, root: Path, more_env: dict[str, str] | None = None, stop_with: int = signal.SIGINT
) -> Iterator[dict[str, Any]]:
    """A `tuneloop serve support` process: v1 (champion) and v2 (challenger), LoRA adapters of the tiny base
    that answer differently (`more_env`: settings of this server; `stop_with`: the signal that stops it)."""
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    home = root / "home"
    rc = RegistryClient(Settings(home=home))
    base, _ = import_base(rc, "tiny", str(tiny_model))
    folders = {v: build_tiny_adapter(tiny_model, root / f"adapter-{v}", seed=v + 1) for v in (1, 2)}
    for v in (1, 2):
        register_adapter(rc, "support", folders[v], base_name="tiny", base_version=base.version, method="lora")
    rc.mlflow.set_registered_model_alias("support", "champion", "1")
    rc.mlflow.set_registered_model_alias("support", "challenger", "2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env |= {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_SERVE__TOKENS": f'["{TOKEN}"]',
        "TUNELOOP_INGEST__TOKENS": f'["{INGEST_TOKEN}"]',
        "TUNELOOP_SERVE__RELOAD_SECONDS": "0.5",
        "TUNELOOP_SERVE__MAX_TOKENS": "16",
        "TUNELOOP_SERVE__COLLECT_MS": "20",
    } | (more_env or {})
    server = _Server(env, root / "serve.log")
    try:
        yield {"url": server.url, "rc": rc, "folders": folders, "tiny": tiny_model, "log": server.log, "env": env}
    finally:
        server.stop(stop_with)


class _Server:
    """A `tuneloop serve support` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{free_port()}"
        exe = Path(sys.executable).with_name("tuneloop")
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "support", "--port", self.url.rsplit(":", 1)[1]], env=env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(log.read_text())

    def stop(self, how: int = signal.SIGINT) -> None:
        self.proc.send_signal(how)  # Ctrl-C (or SIGTERM, as `tuneloop up` and Kubernetes stop it): a clean stop
        assert self.proc.wait(30) == 0
        text = self.log.read_text()
        assert "Traceback" not in text and text.rstrip().endswith("stopped"), text


def _client(served, api_key: str = TOKEN):
    import openai

    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=api_key, max_retries=0, timeout=120)


def _reference(served, version: int, prompt: str, max_new_tokens: int) -> str:
    from peft import PeftModel

    model, tokenizer = _base(served["tiny"])
    return _alone(
        PeftModel.from_pretrained(model, served["folders"][version]).eval(), tokenizer, prompt, max_new_tokens
    )


def _rendered_chat(served) -> str:
    from tuneloop.pipelines.evaluation.generation import render_prompt

    return render_prompt(_base(served["tiny"])[1], MESSAGES)


def test_chat_answers_with_the_champion_and_stores_the_record(served) -> None:
    reply = _client(served).chat.completions.create(
        model="support@champion", messages=MESSAGES, temperature=0, max_tokens=8, user="alice"
    )
    assert reply.model == "support:1" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == _reference(served, 1, _rendered_chat(served), 8) != ""
    assert reply.choices[0].finish_reason in ("stop", "length")
    record = served["rc"].stores.records.get(reply.id)
    assert (record.version, record.alias, record.output) == (1, "champion", reply.choices[0].message.content)
    assert record.prompt == "what is the refund of my order"  # the user turns, as references build prompts
    assert record.kind == "live" and record.pair_of is None
    assert record.meta["user"] and record.meta["user"] != "alice"  # hashed, never in clear
    assert record.meta["messages"] == MESSAGES and record.latency_ms > 0
    assert reply.usage.completion_tokens == record.meta["usage"]["completion_tokens"] >= 1


def test_records_list_shows_what_was_served(served) -> None:
    reply = _client(served).chat.completions.create(model="support:2", messages=MESSAGES, temperature=0, max_tokens=3)
    listed = run_cli(
        "records", "list", "--model", "support", "--kind", "live", "--limit", "3", "--json", env=served["env"]
    )
    assert listed.returncode == 0, listed.stderr
    newest = json.loads(listed.stdout)[0]
    assert (newest["id"], newest["version"], newest["kind"], newest["output"]) == (
        reply.id,
        2,
        "live",
        reply.choices[0].message.content,
    )
    table = run_cli("records", "list", "--kind", "shadow", env=served["env"])
    assert table.returncode == 0 and table.stdout.strip() == "no records"
    bad = run_cli("records", "list", "--kind", "nope", env=served["env"])
    assert bad.returncode == 2 and "'nope' is not one of" in bad.stderr


def test_completions_on_a_pinned_version_and_the_default_model(served) -> None:
    client = _client(served)
    prompts = ["hello world", "the capital of france is"]
    reply = client.completions.create(model="support:2", prompt=prompts, temperature=0, max_tokens=6)
    assert reply.model == "support:2"
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == [
        _reference(served, 2, p, 6) for p in prompts
    ]
    default = client.completions.create(model="support@champion", prompt="hello world", temperature=0, max_tokens=6)
    assert default.choices[0].text == _reference(served, 1, "hello world", 6) != reply.choices[0].text  # v1 ≠ v2


def test_a_stream_carries_the_same_answer_and_its_usage(served) -> None:
    client = _client(served)
    whole = client.chat.completions.create(model="support@challenger", messages=MESSAGES, temperature=0, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model="support@challenger",
            messages=MESSAGES,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_models_lists_the_aliases(served) -> None:
    ids = {m.id for m in _client(served).models.list()}
    assert {"support@champion", "support@challenger"} <= ids


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"n": 2}, 400, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"max_tokens": 17}, 400, "max_tokens"),
        ({"max_completion_tokens": 99}, 400, "max_completion_tokens"),
        ({"temperature": 3}, 400, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": []}, 400, "messages"),
        ({"model": "support:99"}, 404, "model"),
        ({"model": "support@nobody"}, 404, "model"),
        ({"model": "other@champion"}, 404, "model"),
    ],
)
def test_bad_input_is_refused_openai_shaped_and_stores_nothing(served, change, status, param) -> None:
    import openai

    before = served["rc"].stores.records.count("support")
    request = {"model": "support@champion", "messages": MESSAGES, "max_tokens": 4} | change
    with pytest.raises(openai.APIStatusError) as refused:
        _client(served).chat.completions.create(**request)
    assert refused.value.status_code == status
    error = refused.value.body
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert served["rc"].stores.records.count("support") == before


def test_unknown_harmless_fields_are_ignored(served) -> None:
    reply = _client(served).chat.completions.create(
        model="support@champion", messages=MESSAGES, max_tokens=2, extra_body={"some_vendor_field": 1}
    )
    assert reply.choices[0].message.role == "assistant"


def test_no_token_is_401_and_a_token_of_another_scope_403(served) -> None:
    import openai

    with pytest.raises(openai.PermissionDeniedError) as scoped:
        _client(served, api_key=INGEST_TOKEN).chat.completions.create(model="support@champion", messages=MESSAGES)
    assert scoped.value.body["type"] == "permission_error" and "scope `serve`" in scoped.value.body["message"]

    with pytest.raises(openai.AuthenticationError) as refused:
        _client(served, api_key="wrong").chat.completions.create(model="support@champion", messages=MESSAGES)
    assert refused.value.status_code == 401 and refused.value.body["type"] == "authentication_error"
    request = urllib.request.Request(served["url"] + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as bare:
        urllib.request.urlopen(request, timeout=10)
    assert bare.value.code == 401


def test_an_alias_moved_in_mlflow_is_served_within_the_reload_interval(served) -> None:
    client, rc = _client(served), served["rc"]
    assert (
        client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=2).model == "support:1"
    )
    rc.mlflow.set_registered_model_alias("support", "champion", "2")  # as a person would in the MLflow UI
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=2)
            if reply.model == "support:2":
                break
            time.sleep(0.1)
        assert reply.model == "support:2"
        assert rc.stores.records.get(reply.id).version == 2
    finally:
        rc.mlflow.set_registered_model_alias("support", "champion", "1")


PROMPTS = ["hello world", "the capital of france is", "where is my order", "refund please"]


@pytest.fixture(scope="module")
def references(served) -> dict[tuple[int, str], str]:
    """Each version's greedy answer (batch of one, 4 tokens) to each of PROMPTS."""
    return {(v, p): _reference(served, v, p, 4) for v in (1, 2) for p in PROMPTS}


def test_a_promotion_under_load_fails_no_request_and_moves_new_requests(served, references) -> None:
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client, rc = _client(served), served["rc"]
    assert references[(1, PROMPTS[0])] != references[(2, PROMPTS[0])]
    _served_by(client, 1)  # an alias moved back by an earlier test is followed within reload_seconds
    moved_at: list[float] = []
    replies: list[tuple[float, str, int, str, str]] = []
    lock, numbers = threading.Lock(), itertools.count()

    def settled() -> float:  # reload_seconds, plus one batch and slack for a loaded CI machine
        return moved_at[0] + 0.5 + 2.0 if moved_at else float("inf")

    def client_loop() -> None:
        """Send requests until 100 of all clients' were sent after the move settled (however fast this
        machine answers), promoting v2 at the 100th: ≥ 200 requests across the promotion."""
        while True:
            i = next(numbers)
            with lock:
                if i == 100:
                    rc.mlflow.set_registered_model_alias("support", "champion", "2")  # promoted mid-traffic
                    moved_at.append(time.monotonic())
                if i > 3000 or sum(sent > settled() for sent, *_ in replies) >= 100:
                    return
            prompt = PROMPTS[i % len(PROMPTS)]
            sent = time.monotonic()
            reply = client.completions.create(model="support@champion", prompt=prompt, temperature=0, max_tokens=4)
            with lock:
                replies.append((sent, reply.id, int(reply.model.rsplit(":", 1)[1]), reply.choices[0].text, prompt))

    try:
        with ThreadPoolExecutor(4) as pool:  # 4 concurrent clients; any failed request raises here
            for future in [pool.submit(client_loop) for _ in range(4)]:
                future.result()
    finally:
        rc.mlflow.set_registered_model_alias("support", "champion", "1")
    versions = [v for _, _, v, _, _ in replies]
    assert len(versions) >= 200 and versions.count(1) >= 90 and versions.count(2) >= 100, versions
    for _, record_id, version, text, prompt in replies:
        record = rc.stores.records.get(record_id)
        assert (record.version, record.alias, record.output) == (version, "champion", text)
        assert text == references[(version, prompt)]  # the answer is that version's own
    after = [v for sent, _, v, _, _ in replies if sent > settled()]
    assert len(after) >= 100 and set(after) == {2}


def test_a_new_holder_that_cannot_load_leaves_the_old_one_serving_and_notifies(served, tmp_path: Path) -> None:
    import shutil
    from urllib.parse import urlparse

    import sqlalchemy as sa

    from tuneloop.names import Tag
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.store.tables import notifications

    rc = served["rc"]
    folder = build_tiny_adapter(served["tiny"], tmp_path / "adapter-3", seed=9)
    broken = register_adapter(rc, "support", folder, base_name="tiny", base_version=1, method="lora")
    root = rc.mlflow.get_model_version("support", broken.version).tags[Tag.ARTIFACT_URI]
    shutil.rmtree(Path(urlparse(root).path if root.startswith("file:") else root) / "artifacts" / "adapter")  # gone
    client = _client(served)
    _served_by(client, 1)  # an earlier test's moves have settled
    rc.mlflow.set_registered_model_alias("support", "champion", str(broken.version))
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # well past reload_seconds: the alias names the broken version
            reply = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=2)
            assert reply.model == "support:1"
    finally:
        rc.mlflow.set_registered_model_alias("support", "champion", "1")
    with rc.stores.engine.connect() as conn:
        events = conn.execute(sa.select(notifications.c.event, notifications.c.payload)).all()
    failed = [payload for event, payload in events if event == "serve.load_failed"]
    assert failed and failed[0]["version"] == int(broken.version) and failed[0]["serving"] == 1
    assert 1 <= len(failed) <= 3  # retried with backoff (2 s, 4 s, ...), not on every request
    assert "could not be loaded" in served["log"].read_text()


def _served_by(client, version: int, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        reply = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=1)
        if reply.model == f"support:{version}":
            return
        time.sleep(0.1)
    raise AssertionError(f"support@champion is not answered by v{version}")


@pytest.fixture(scope="module")
def slow(served):
    """A second server on the same stores: long answers, one at a time, a queue of two."""
    env = served["env"] | {
        "TUNELOOP_SERVE__MAX_TOKENS": "120",
        "TUNELOOP_SERVE__MAX_BATCH": "1",
        "TUNELOOP_SERVE__MAX_QUEUE": "2",
        "TUNELOOP_SERVE__COLLECT_MS": "0",
    }
    server = _Server(env, served["log"].with_name("slow.log"))
    yield server
    if server.proc.poll() is None:
        server.stop()


def _long_prompt(url: str) -> tuple[str, int]:
    """The user turn (of 40) v1 answers at greatest length, and that length in tokens (at least 30: a
    cut two words in must end well before the row would have)."""
    import random

    import openai

    from tests.conftest import WORDS

    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
    lengths = {}
    for i in range(40):
        prompt = " ".join(random.Random(i).choices(WORDS, k=3 + i % 5))
        messages = [{"role": "user", "content": prompt}]
        reply = client.chat.completions.create(model="support:1", messages=messages, temperature=0, max_tokens=120)
        lengths[prompt] = reply.usage.completion_tokens
    prompt = max(lengths, key=lengths.__getitem__)
    assert lengths[prompt] >= 30, lengths
    return prompt, lengths[prompt]


def test_a_stream_cut_by_the_client_is_stored_as_cancelled(served, slow) -> None:
    import httpx

    prompt, full_length = _long_prompt(slow.url)
    request = {
        "model": "support:1",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    received, record_id = "", None
    with httpx.stream("POST", slow.url + "/v1/chat/completions", json=request, headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                record_id = event["id"]
                received += event["choices"][0]["delta"].get("content") or ""
                if len(received.split()) >= 2:
                    break  # hang up two words in
    rc = served["rc"]
    deadline = time.monotonic() + 30
    while (record := rc.stores.records.get(record_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert record is not None and record.meta["finish_reason"] == "cancelled"
    # What was sent, which is what the client read plus any chunks still in its socket buffer when it hung up
    assert (
        record.output.startswith(received.strip())
        and record.output.split()[: len(received.split())] == received.split()
    )
    assert record.meta["usage"]["completion_tokens"] < full_length  # the row ended early: its slot was freed


def test_a_full_queue_answers_429_with_retry_after_and_stores_nothing(served, slow) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    rc = served["rc"]
    before = rc.stores.records.count("support")
    request = {"model": "support:1", "prompt": "hello world", "max_tokens": 120, "temperature": 0}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.post(slow.url + "/v1/completions", json=request, headers=headers, timeout=60), range(12)
            )
        )
    refused = [r for r in responses if r.status_code == 429]
    answered = [r for r in responses if r.status_code == 200]
    assert refused and answered and len(refused) + len(answered) == 12, [r.status_code for r in responses]
    assert all(r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    assert rc.stores.records.count("support") == before + len(answered)


def test_kill_9_under_load_loses_no_answered_record_and_stores_none_twice(served, slow) -> None:
    import threading

    import httpx
    import sqlalchemy as sa

    from tuneloop.store.tables import records

    got: list[str] = []
    stop = threading.Event()
    request = {"model": "support:2", "prompt": "where is my order", "max_tokens": 8, "temperature": 0}

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
            while not stop.is_set():
                try:
                    reply = http.post(slow.url + "/v1/completions", json=request)
                except httpx.HTTPError:
                    return  # the server is gone
                if reply.status_code == 200:
                    got.append(reply.json()["id"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    slow.proc.kill()  # kill -9, mid-traffic
    slow.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(got) >= 20
    restarted = _Server(slow.env, slow.log)  # starts on the same stores as if nothing happened
    try:
        reply = _client({"url": restarted.url}).completions.create(model="support:2", prompt="hi", max_tokens=2)
        assert reply.id
    finally:
        restarted.stop()
    with served["rc"].stores.engine.connect() as conn:
        stored = conn.execute(
            sa.select(records.c.id, sa.func.count()).where(records.c.id.in_(got)).group_by(records.c.id)
        ).all()
    assert sorted(stored) == sorted((i, 1) for i in got)
