"""The loaded models of one server: a base loaded once per quantization, the LoRA versions being served
attached to it under their own names, other versions (prompt tuning, full models) on models of their own.
Each loaded model has one `Batcher`, the only thread that touches it. At most `max_versions` versions
stay attached; the least recently used leaves first, never one an alias being served points to, never
one with requests still running. A version an alias moved away from is `retire`d: it leaves once its
running requests are done (drained), unless someone asks for it again first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from tuneloop.serving.batcher import Answer, Ask, Batcher
from tuneloop.serving.versions import Servable


@dataclass
class _Loaded:
    batcher: Batcher
    versions: set[str]  # adapter names attached to it
    # The request threads' own copy: a fast tokenizer's padding is state of the Rust object, set by each
    # call, so counting a prompt there while the model thread pads a batch breaks the batch.
    tokenizer: Any = field(init=False)

    def __post_init__(self) -> None:
        import copy

        self.tokenizer = copy.deepcopy(self.batcher.tokenizer)


class Host:
    def __init__(
        self,
        fetch: Callable[[str, int], Servable],
        *,
        max_versions: int = 8,
        max_batch: int = 16,
        collect_ms: float = 5.0,
        max_queue: int = 256,
        quantized_bases: bool = True,
    ) -> None:
        self._fetch, self.max_versions, self.quantized_bases = fetch, max_versions, quantized_bases
        self._batching: dict[str, Any] = {"max_batch": max_batch, "collect_ms": collect_ms, "max_queue": max_queue}
        self._models: dict[str, _Loaded] = {}  # base key -> loaded model
        self._versions: OrderedDict[tuple[str, int], Servable] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # loads happen one at a time; generation never waits on it
        self._running: dict[tuple[str, int], int] = {}  # requests submitted and not yet answered, per version
        self._counting = threading.Lock()
        self._retired: set[tuple[str, int]] = set()

    def submit(
        self,
        name: str,
        version: int,
        ask: Ask,
        *,
        keep: AbstractSet[tuple[str, int]] = frozenset(),
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        spare: bool = False,
    ) -> Future[Answer]:
        """Generate `ask` on `name` v`version`, loading it first if needed. `keep`: versions that must
        stay loaded (what the served aliases hold); `on_text` and `cancel` as `Batcher.submit` takes them;
        `spare`: work nobody waits for (a shadow answer), done in spare capacity or dropped."""
        key = (name, version)
        with self._lock:
            servable = self._load(key, keep)
            batcher = self._models[servable.base_key].batcher
            adapter = servable.adapter_name if servable.adapter_folder is not None and servable.shares_base else None
            ask = replace(ask, adapter=adapter)
            if spare:
                future = batcher.submit_spare(ask, cancel=cancel)
            else:
                future = batcher.submit(ask, on_text=on_text, cancel=cancel)
            with self._counting:
                self._running[key] = self._running.get(key, 0) + 1
        future.add_done_callback(lambda _: self._finished(key))
        return future

    def load(self, name: str, version: int, *, keep: AbstractSet[tuple[str, int]] = frozenset()) -> Servable:
        with self._lock:
            return self._load((name, version), keep)

    def retire(self, name: str, version: int) -> None:
        """No alias holds `name` v`version` any more: release it once its running requests are done."""
        with self._lock:
            if (name, version) in self._versions:
                self._retired.add((name, version))

    def running(self, name: str, version: int) -> int:
        with self._counting:
            return self._running.get((name, version), 0)

    def _finished(self, key: tuple[str, int]) -> None:
        with self._counting:  # not the load lock: this runs on a model thread a load may be waiting on
            self._running[key] -= 1

    def _load(self, key: tuple[str, int], keep: AbstractSet[tuple[str, int]]) -> Servable:
        self._retired.discard(key)  # asked for again: it stays
        self._release_drained(keep)
        if key in self._versions:
            self._versions.move_to_end(key)
            return self._versions[key]
        servable = self._fetch(*key)
        if not self.quantized_bases and servable.quantization:
            servable = replace(servable, quantization={})
        self._attach(servable)
        self._versions[key] = servable
        self._evict(keep | {key})
        return servable

    def _release_drained(self, keep: AbstractSet[tuple[str, int]]) -> None:
        for key in [k for k in self._retired if k not in keep and not self._running.get(k)]:
            self._retired.discard(key)
            self._drop(key)

    def tokenizer(self, servable: Servable) -> Any:
        """For request threads (rendering, counting); never the one the model thread pads batches with."""
        return self._models[servable.base_key].tokenizer

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._versions)

    def close(self) -> None:
        for loaded in self._models.values():
            loaded.batcher.close()

    def _attach(self, servable: Servable) -> None:
        loaded = self._models.get(servable.base_key)
        if loaded is None:
            loaded = self._models[servable.base_key] = _Loaded(Batcher(*_load_base(servable), **self._batching), set())
        if servable.adapter_folder is None:
            return
        batcher, name = loaded.batcher, servable.adapter_name

        def attach() -> None:
            from peft import PeftModel

            from tuneloop.quiet import PEFT_READS_A_DEPRECATED_NAME, ignoring

            with ignoring(*PEFT_READS_A_DEPRECATED_NAME):
                if hasattr(batcher.model, "peft_config"):
                    batcher.model.load_adapter(servable.adapter_folder, adapter_name=name)
                else:
                    batcher.model = PeftModel.from_pretrained(
                        batcher.model, servable.adapter_folder, adapter_name=name
                    ).eval()

        batcher.on_model_thread(attach).result()
        loaded.versions.add(name)

    def _evict(self, keep: AbstractSet[tuple[str, int]]) -> None:
        while len(self._versions) > self.max_versions:
            victim = next((k for k in self._versions if k not in keep and not self._running.get(k)), None)
            if victim is None:
                return  # everything loaded is held by an alias or busy: over the bound rather than refuse one
            self._drop(victim)

    def _drop(self, key: tuple[str, int]) -> None:
        servable = self._versions.pop(key)
        loaded = self._models[servable.base_key]
        if servable.adapter_folder is not None and servable.shares_base:
            name = servable.adapter_name
            batcher = loaded.batcher
            batcher.on_model_thread(lambda: _delete_adapter(batcher.model, name)).result()
            loaded.versions.discard(name)
        if not servable.shares_base or not (loaded.versions or _has_base_version(self._versions, servable)):
            loaded.batcher.close()
            del self._models[servable.base_key]


def _delete_adapter(model: Any, name: str) -> None:
    from tuneloop.quiet import ignoring

    # PEFT then makes another adapter "active"; rows name their adapter, so which one is active never matters
    with ignoring(r"Adapter .* was active which is now deleted"):
        model.delete_adapter(name)


def _has_base_version(versions: OrderedDict[tuple[str, int], Servable], gone: Servable) -> bool:
    return any(s.base_key == gone.base_key and s.adapter_folder is None for s in versions.values())


def _load_base(servable: Servable) -> tuple[Any, Any]:
    """The model and tokenizer a servable's batcher starts with: its base (a non-LoRA version is
    loaded whole here, on a base of its own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.registry.loading import load_kwargs

    model = AutoModelForCausalLM.from_pretrained(servable.base_folder, **load_kwargs(servable.quantization))
    tokenizer = AutoTokenizer.from_pretrained(servable.base_folder)
    if not servable.shares_base and servable.adapter_folder is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, servable.adapter_folder)
    return model.eval(), tokenizer
