"""The model thread's dynamic batching: mixed LoRA versions in one batch answer as batch-of-one
`generate` does, per request limits and stop strings hold, a full queue refuses, errors reach callers."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import WORDS, build_tiny_adapter
from tuneloop.errors import Overloaded

PROMPTS = [" ".join(random.Random(i).choices(WORDS, k=3 + i % 5)) for i in range(16)]


def _base(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _alone(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Batch-of-one greedy `generate`: the reference every batched answer must equal."""
    import torch

    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    tokens = out[0, batch["input_ids"].shape[1] :].tolist()
    tokens = tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def two_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "v2": build_tiny_adapter(tiny_model, folder / "v2", seed=2),
        "v3": build_tiny_adapter(tiny_model, folder / "v3", seed=3),
    }


@pytest.fixture
def served(tiny_model: Path, two_adapters: dict[str, Path]):
    """A batcher over one copy of the base with both versions attached under their names."""
    from peft import PeftModel

    from tuneloop.serving.batcher import Batcher

    model, tokenizer = _base(tiny_model)
    model = PeftModel.from_pretrained(model, two_adapters["v2"], adapter_name="v2")
    batcher = Batcher(model, tokenizer, max_batch=16, collect_ms=200)
    batcher.on_model_thread(lambda: model.load_adapter(two_adapters["v3"], adapter_name="v3")).result(timeout=60)
    yield batcher
    batcher.close()


def test_mixed_versions_in_one_batch_answer_as_each_alone(
    served, tiny_model: Path, two_adapters: dict[str, Path]
) -> None:
    from peft import PeftModel

    from tuneloop.serving.batcher import Ask

    names = ["v2", "v3", None, "v3"]
    asks = [Ask(p, adapter=names[i % 4], max_new_tokens=6 + i % 3) for i, p in enumerate(PROMPTS)]
    with ThreadPoolExecutor(16) as pool:  # 16 concurrent callers
        answers = list(pool.map(lambda a: served.submit(a).result(timeout=120), asks))
    assert max(a.batch_rows for a in answers) > 4, "the requests were not generated together"

    alone = {None: _base(tiny_model)[0]}
    for name, folder in two_adapters.items():  # each version on its own copy of the base: no adapter switching
        alone[name] = PeftModel.from_pretrained(_base(tiny_model)[0], folder).eval()
    tokenizer = _base(tiny_model)[1]
    expected = [_alone(alone[a.adapter], tokenizer, a.prompt, a.max_new_tokens) for a in asks]
    assert [a.text for a in answers] == expected
    # the versions really answer differently, from each other and from the base
    by_version = {n: [_alone(alone[n], tokenizer, p, 8) for p in PROMPTS] for n in alone}
    assert by_version["v2"] != by_version["v3"] != by_version[None] != by_version["v2"]
    for answer, ask in zip(answers, asks, strict=True):
        assert 1 <= answer.completion_tokens <= ask.max_new_tokens
        if answer.finish_reason == "length":
            assert answer.completion_tokens == ask.max_new_tokens
        else:
            assert answer.finish_reason == "stop"


def test_a_batch_waits_for_as_many_callers_as_the_last_one_held(tiny_model: Path) -> None:
    """Callers whose answers left together come back some ms apart: the next batch waits for as many of
    them as the last batch held (up to COLLECT_GROWTH windows); a lone caller after them still gets its answer."""
    import threading
    import time

    from tuneloop.serving.batcher import Ask, Batcher

    model, tokenizer = _base(tiny_model)
    batcher = Batcher(model, tokenizer, max_batch=8, collect_ms=50)  # windows of 50 ms, 1 s at most
    try:
        together = [batcher.submit(Ask(p, max_new_tokens=2)) for p in PROMPTS[:4]]
        assert [f.result(timeout=60).batch_rows for f in together] == [4] * 4
        spaced: list = []

        def arrive_apart() -> None:  # 100 ms apart: twice the collection window, well inside its cap
            for p in PROMPTS[4:8]:
                spaced.append(batcher.submit(Ask(p, max_new_tokens=2)))
                time.sleep(0.1)

        sender = threading.Thread(target=arrive_apart)
        sender.start()
        sender.join()
        assert [f.result(timeout=60).batch_rows for f in spaced] == [4] * 4
        assert batcher.submit(Ask(PROMPTS[8], max_new_tokens=2)).result(timeout=60).batch_rows == 1
    finally:
        batcher.close()


def test_a_stop_string_ends_the_text(served) -> None:
    from tuneloop.serving.batcher import Ask

    full = served.submit(Ask(PROMPTS[0], adapter="v2", max_new_tokens=8)).result(timeout=60)
    words = full.text.split()
    assert len(words) >= 2, full
    cut = served.submit(Ask(PROMPTS[0], adapter="v2", max_new_tokens=8, stop=(words[1],))).result(timeout=60)
    assert cut.text == full.text[: full.text.index(words[1])].strip() and cut.finish_reason == "stop"


def test_streamed_pieces_join_to_the_answer_and_a_caller_that_leaves_ends_only_its_row(served) -> None:
    import threading

    from tuneloop.serving.batcher import Ask

    answers = {p: served.submit(Ask(p, adapter="v2", max_new_tokens=12)).result(timeout=60) for p in PROMPTS}
    long = [p for p, a in answers.items() if a.finish_reason == "length" and len(a.text.split()) >= 4]
    assert len(long) >= 3, answers  # rows that run their full length: a cancelled one must end before them
    prompts, whole = long[:3], [answers[p] for p in long[:3]]
    pieces: list[list[str]] = [[], [], []]
    leave = threading.Event()

    def on_text(row: int):
        def take(piece: str) -> None:
            pieces[row].append(piece)
            if row == 1 and len(pieces[1]) == 2:
                leave.set()  # the second caller hangs up after two pieces

        return take

    futures = [
        served.submit(Ask(p, adapter="v2", max_new_tokens=12), on_text=on_text(i), cancel=leave if i == 1 else None)
        for i, p in enumerate(prompts)
    ]
    streamed = [f.result(timeout=60) for f in futures]
    assert streamed[1].batch_rows == 3, "the three requests were not generated together"
    for row in (0, 2):  # the others stream their whole answer, as if nobody had left
        assert "".join(pieces[row]) == streamed[row].text == whole[row].text
        assert streamed[row].finish_reason == whole[row].finish_reason and len(pieces[row]) > 1
    cut = streamed[1]
    assert cut.finish_reason == "cancelled" and cut.text == "".join(pieces[1][:2]) != whole[1].text
    assert whole[1].text.startswith(cut.text) and cut.completion_tokens < whole[1].completion_tokens
    gone = threading.Event()
    gone.set()  # a caller gone before its request ran: nothing is generated for it
    assert served.submit(Ask(PROMPTS[0], max_new_tokens=4), cancel=gone).result(timeout=60).completion_tokens == 0


def test_an_unknown_version_fails_its_callers_and_the_thread_serves_on(served) -> None:
    from tuneloop.serving.batcher import Ask

    with pytest.raises(Exception, match="nobody"):
        served.submit(Ask(PROMPTS[0], adapter="nobody", max_new_tokens=2)).result(timeout=60)
    assert served.submit(Ask(PROMPTS[0], adapter="v3", max_new_tokens=2)).result(timeout=60).text is not None


def test_a_full_queue_refuses_instead_of_growing(tiny_model: Path) -> None:
    import threading

    from tuneloop.serving.batcher import Ask, Batcher

    model, tokenizer = _base(tiny_model)
    batcher = Batcher(model, tokenizer, max_queue=2)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait()

    batcher.on_model_thread(hold)
    assert started.wait(60)  # the model thread is busy and the queue empty
    try:
        queued = [batcher.submit(Ask(PROMPTS[0], max_new_tokens=2)) for _ in range(2)]
        with pytest.raises(Overloaded) as refused:
            batcher.submit(Ask(PROMPTS[0], max_new_tokens=2))
        assert refused.value.http_status == 429
    finally:
        release.set()
    assert all(f.result(timeout=60).completion_tokens >= 1 for f in queued)
    batcher.close()


def test_the_host_keeps_few_versions_and_never_evicts_an_alias_holder(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.serving.batcher import Ask
    from tuneloop.serving.host import Host
    from tuneloop.serving.versions import Servable

    folders = {v: build_tiny_adapter(tiny_model, tmp_path / f"v{v}", seed=v) for v in (1, 2, 3)}

    def fetch(name: str, version: int) -> Servable:
        return Servable(name, version, tiny_model, "sha256:tiny", folders[version], method="lora")

    host = Host(fetch, max_versions=2, collect_ms=1)
    try:
        champion = {("m", 1)}
        first = host.submit("m", 1, Ask(PROMPTS[0], max_new_tokens=4), keep=champion).result(timeout=60)
        host.load("m", 2, keep=champion)
        host.load("m", 3, keep=champion)  # over the bound: v2 (least recent, no alias) leaves, v1 stays
        assert host.loaded() == [("m", 1), ("m", 3)]
        again = host.submit("m", 1, Ask(PROMPTS[0], max_new_tokens=4), keep=champion).result(timeout=60)
        assert again.text == first.text  # still v1, on the same shared base
        assert len(host._models) == 1  # three versions, one loaded base
        host.load("m", 2, keep={("m", 3)})  # v1 no longer held: now it leaves
        assert host.loaded() == [("m", 3), ("m", 2)]
    finally:
        host.close()


def test_counting_prompts_on_request_threads_never_breaks_a_padded_batch(tiny_model: Path, tmp_path: Path) -> None:
    """The API counts each prompt's tokens on its request threads while the model thread pads batches of
    prompts of different lengths: with one shared fast tokenizer, a count switched its padding off under
    a batch ("Unable to create tensor ... padding=True")."""
    import threading

    from tuneloop.serving.batcher import Ask
    from tuneloop.serving.host import Host
    from tuneloop.serving.versions import Servable

    folder = build_tiny_adapter(tiny_model, tmp_path / "v1", seed=1)
    host = Host(lambda name, version: Servable(name, version, tiny_model, "sha256:tiny", folder, method="lora"))
    stop = threading.Event()

    def count(servable: Servable) -> None:
        tokenizer = host.tokenizer(servable)
        while not stop.is_set():
            for prompt in PROMPTS:
                tokenizer(prompt, add_special_tokens=False)

    try:
        servable = host.load("m", 1, keep={("m", 1)})
        counters = [threading.Thread(target=count, args=(servable,)) for _ in range(4)]
        for thread in counters:
            thread.start()
        lengths = ["hi", "where is my order, it has been a week", "a " * 40]
        futures = [host.submit("m", 1, Ask(lengths[i % 3], max_new_tokens=1), keep={("m", 1)}) for i in range(200)]
        answers = [f.result(timeout=120) for f in futures]
    finally:
        stop.set()
        host.close()
    assert all(a.completion_tokens >= 1 for a in answers)


def test_more_spare_work_than_a_batch_is_all_answered_once_idle(tiny_model: Path) -> None:
    from tuneloop.serving.batcher import Ask, Batcher

    model, tokenizer = _base(tiny_model)
    batcher = Batcher(model, tokenizer, max_batch=2, collect_ms=5, max_spare=6)
    try:
        spare = [batcher.submit_spare(Ask(p, max_new_tokens=2)) for p in PROMPTS[:5]]
        rows = [f.result(timeout=60).batch_rows for f in spare]
        assert sorted(rows) == [1, 2, 2, 2, 2] and batcher.spare_dropped == 0  # three batches, one after another
    finally:
        batcher.close()
