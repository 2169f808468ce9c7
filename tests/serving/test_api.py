"""`tuneloop serve` as a real process, called with the official `openai` client (max_retries=0: the
client retries 429 and 5xx by itself, which would hide failures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import build_tiny_adapter, free_port
from tests.serving.test_batcher import _alone, _base

TOKEN = "serve-test-token"
MESSAGES = [{"role": "system", "content": "help"}, {"role": "user", "content": "what is the refund of my order"}]


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """`support` v1 (champion) and v2 (challenger), two LoRA adapters on one tiny base, served."""
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    root = tmp_path_factory.mktemp("serve")
    home = root / "home"
    rc = RegistryClient(Settings(home=home))
    base, _ = import_base(rc, "tiny", str(tiny_model))
    folders = {v: build_tiny_adapter(tiny_model, root / f"adapter-{v}", seed=v + 1) for v in (1, 2)}
    for v in (1, 2):
        register_adapter(rc, "support", folders[v], base_name="tiny", base_version=base.version, method="lora")
    rc.mlflow.set_registered_model_alias("support", "champion", "1")
    rc.mlflow.set_registered_model_alias("support", "challenger", "2")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env |= {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_INGEST__TOKENS": f'["{TOKEN}"]',
        "TUNELOOP_SERVE__RELOAD_SECONDS": "0.5",
        "TUNELOOP_SERVE__MAX_TOKENS": "16",
        "TUNELOOP_SERVE__COLLECT_MS": "20",
    }
    exe = Path(sys.executable).with_name("tuneloop")
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen([str(exe), "serve", "support", "--port", str(port)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            time.sleep(0.3)
    assert proc.poll() is None, (root / "serve.log").read_text()
    yield {"url": url, "rc": rc, "folders": folders, "tiny": tiny_model, "log": root / "serve.log"}
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, no traceback
    assert proc.wait(30) == 0
    text = (root / "serve.log").read_text()
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
    assert record.meta["kind"] == "live" and record.meta["user"] != "alice"  # hashed, never in clear
    assert reply.usage.completion_tokens == record.meta["usage"]["completion_tokens"] >= 1


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


def test_no_token_is_401(served) -> None:
    import openai

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
