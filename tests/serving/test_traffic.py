"""Traffic policies: canary and shadow on a real `tuneloop serve` process with two LoRA adapters that
answer differently, called with the `openai` client; the policy's validation, store and audit; the model
thread's spare rows."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.serving.test_api import MESSAGES, PROMPTS, _client, _reference, serving_two_adapters


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    with serving_two_adapters(tiny_model, tmp_path_factory.mktemp("traffic")) as found:
        yield found


def _set_policy(served, tmp_path: Path, text: str):
    path = tmp_path / "traffic.yaml"
    path.write_text(text)
    return run_cli("traffic", "set", "support", str(path), "--json", env=served["env"])


def _wait_for(condition, within_s: float = 30.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def _health(served) -> dict:
    with urllib.request.urlopen(served["url"] + "/health", timeout=10) as reply:
        return json.loads(reply.read())


def _records(served, kind: str) -> list:
    return served["rc"].stores.records.recent(model="support", kind=kind, limit=10_000)


def test_a_policy_is_validated_stored_audited_and_shown(served, tmp_path: Path) -> None:
    bad = _set_policy(
        served, tmp_path, "canary: {alias: challenger, share: 1.5}\nshadow: {alias: champion, share: 0.5}\nmirror: {}\n"
    )
    assert bad.returncode != 0
    for problem in ("`canary.share`", "`mirror`: unknown key", "`shadow`"):
        assert problem in bad.stderr, bad.stderr
    assert run_cli("traffic", "set", "nosuch", str(tmp_path / "traffic.yaml"), env=served["env"]).returncode != 0

    done = _set_policy(served, tmp_path, "canary: {alias: challenger, share: 0.1}\n")
    assert done.returncode == 0, done.stderr
    shown = json.loads(run_cli("traffic", "show", "support", "--json", env=served["env"]).stdout)
    assert shown["policy"] == {"canary": {"alias": "challenger", "share": 0.1, "sticky_by": "user"}}
    assert shown["holders"] == {"champion": 1, "challenger": 2} and shown["set_by"]
    assert _set_policy(served, tmp_path, "").returncode == 0  # an empty file: off
    history = json.loads(run_cli("models", "history", "support", "--json", env=served["env"]).stdout)
    changes = [e for e in history["moves"] if e["kind"] == "traffic"]
    assert [json.loads(e["reason"])["to"] for e in changes][-2:] == [
        "canary challenger 10%, sticky by user",
        "off: the champion answers every request",
    ]
    assert history["chain_intact"]  # the policy changes are links of the model's hash chain


def test_shadow_answers_every_request_unseen_and_pairs_it(served, tmp_path: Path) -> None:
    assert _set_policy(served, tmp_path, "shadow: {alias: challenger, share: 1.0}\n").returncode == 0
    client = _client(served)
    try:
        _wait_for(lambda: _health(served)["traffic"].startswith("shadow"))
        before = {r.id for r in _records(served, "shadow")}
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda p: client.completions.create(
                        model="support@champion", prompt=p, max_tokens=4, temperature=0
                    ),
                    PROMPTS * 2,
                )
            )
        for prompt, reply in zip(PROMPTS * 2, replies, strict=True):  # the caller gets the champion's answer
            assert reply.model == "support:1"
            assert reply.choices[0].text == _reference(served, 1, prompt, 4)
        live = {r.id: r for r in replies}
        shadows = _wait_for(
            lambda: (
                (s := [r for r in _records(served, "shadow") if r.id not in before and r.pair_of in live])
                and len(s) == len(live)
                and s
            )
        )
        assert sorted(s.pair_of for s in shadows) == sorted(live)  # one shadow answer per live record
        for shadow in shadows:
            paired = served["rc"].stores.records.get(shadow.pair_of)
            assert (paired.kind, paired.version, shadow.version, shadow.alias) == ("live", 1, 2, "challenger")
            assert shadow.prompt == paired.prompt and shadow.meta["asked"] == "champion"
            assert shadow.output == _reference(served, 2, shadow.prompt, 4)  # the challenger's own greedy answer
        assert any(s.output != served["rc"].stores.records.get(s.pair_of).output for s in shadows)  # they differ
        counts = _health(served)["shadow"]
        assert counts["sampled"] >= len(live) and counts["answered"] >= len(live)
    finally:
        _set_policy(served, tmp_path, "")


def test_canary_share_holds_over_1000_requests_and_a_user_never_switches(served, tmp_path: Path) -> None:
    assert _set_policy(served, tmp_path, "canary: {alias: challenger, share: 0.3, sticky_by: user}\n").returncode == 0
    client = _client(served)

    def ask(user: str) -> tuple[str, str, str]:
        reply = client.chat.completions.create(model="support@champion", messages=MESSAGES, max_tokens=1, user=user)
        return user, reply.model, reply.id

    try:
        _wait_for(lambda: _health(served)["traffic"].startswith("canary"))
        users = [f"user-{i}" for i in range(1000)] + [f"user-{i}" for i in range(100)] * 3  # 100 come back 3 times
        with ThreadPoolExecutor(16) as pool:
            answered = list(pool.map(ask, users))
        first = Counter(model for _, model, _ in answered[:1000])
        assert 0.25 <= first["support:2"] / 1000 <= 0.35, first
        by_user: dict[str, set[str]] = {}
        for user, model, _ in answered:
            by_user.setdefault(user, set()).add(model)
        assert all(len(models) == 1 for models in by_user.values())  # sticky: never switches
        record = served["rc"].stores.records.get(next(rid for _, model, rid in answered if model == "support:2"))
        assert (record.kind, record.version, record.alias, record.meta["asked"]) == (
            "canary",
            2,
            "challenger",
            "champion",
        )
        pinned = client.chat.completions.create(model="support:1", messages=MESSAGES, max_tokens=1, user="user-0")
        assert pinned.model == "support:1"  # a request naming a version is not split
    finally:
        _set_policy(served, tmp_path, "")


def test_spare_rows_join_small_batches_only_run_alone_when_idle_and_are_dropped_when_saturated(served) -> None:
    import threading

    from peft import PeftModel

    from tests.serving.test_batcher import _base
    from tuneloop.serving.batcher import SPARE_RIDE_SHARE, Ask, Batcher, SpareDropped

    model, tokenizer = _base(served["tiny"])
    model = PeftModel.from_pretrained(model, served["folders"][1], adapter_name="v1")
    batcher = Batcher(model, tokenizer, max_batch=8, collect_ms=100, max_spare=2)
    assert int(8 * SPARE_RIDE_SHARE) == 2  # a callers' batch of one takes one spare row along, of two none

    def blocked() -> threading.Event:
        hold = threading.Event()
        batcher.on_model_thread(hold.wait)  # the model thread is busy: nothing runs until `hold`
        return hold

    try:
        batcher.on_model_thread(lambda: model.load_adapter(served["folders"][2], adapter_name="v2")).result(timeout=60)
        hold = blocked()
        spare = [batcher.submit_spare(Ask(p, adapter="v2", max_new_tokens=3)) for p in PROMPTS[:3]]
        assert isinstance(spare[2].exception(timeout=5), SpareDropped) and batcher.spare_dropped == 1
        live = batcher.submit(Ask(PROMPTS[3], adapter="v1", max_new_tokens=3))
        hold.set()
        assert live.result(timeout=60).batch_rows == spare[0].result(timeout=60).batch_rows == 2
        assert spare[1].result(timeout=60).batch_rows == 1  # alone, once no caller had come for a while

        hold = blocked()
        late = batcher.submit_spare(Ask(PROMPTS[0], adapter="v2", max_new_tokens=3))
        busy = [batcher.submit(Ask(p, adapter="v1", max_new_tokens=3)) for p in PROMPTS]
        hold.set()
        assert [f.result(timeout=60).batch_rows for f in busy] == [4] * 4  # a busy batch takes no spare row
        assert late.result(timeout=60).batch_rows == 1
    finally:
        batcher.close()
