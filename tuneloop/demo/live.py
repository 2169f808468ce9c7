"""The demo's production: `tuneloop serve` answers the prompts, sent through the official `openai`
client as a caller would; a reviewer's feedback goes to the ingest API by record id (the completion's
`id` is its record's id).

`served(...)` starts both servers (on free ports, with their own tokens) and stops them on exit.
The model server serves QLoRA versions on the fp32 base here: the 4-bit kernels of these CPUs are
several times slower than fp32 (README, "Serving").
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import StoreError

# The model server's settings for the demo: QLoRA on the fp32 base, promotions seen within a second,
# batches as wide as the demo's callers.
SERVE_ENV = {
    "TUNELOOP_SERVE__QUANTIZED_BASES": "false",
    "TUNELOOP_SERVE__RELOAD_SECONDS": "1",
    "TUNELOOP_SERVE__MAX_BATCH": "32",
}


@dataclass(frozen=True)
class Answered:
    id: str  # the record's id
    prompt: str
    text: str
    version: int  # the version that answered


class LiveTraffic:
    """Concurrent callers of one served model: `ask` sends prompts (as the user turn after `system`),
    `feedback` posts what a reviewer said of an answer."""

    def __init__(
        self,
        serve_url: str,
        serve_token: str,
        ingest_url: str,
        ingest_token: str,
        model: str,
        *,
        system: str,
        max_tokens: int,
        concurrency: int = 32,
    ) -> None:
        import httpx
        import openai

        self.model, self.system, self.max_tokens, self.concurrency = model, system, max_tokens, concurrency
        # max_retries=0: a failed request must fail the demo, not be retried out of sight
        self._client = openai.OpenAI(base_url=serve_url + "/v1", api_key=serve_token, max_retries=0, timeout=600)
        self._ingest = httpx.Client(
            base_url=ingest_url, headers={"Authorization": f"Bearer {ingest_token}"}, timeout=60
        )

    def ask(self, prompts: list[str]) -> list[Answered]:
        """Every prompt answered (greedy), `concurrency` requests in flight, in the order given."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.ask_one, prompts))

    def ask_one(self, prompt: str) -> Answered:
        reply = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": self.system}, {"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            temperature=0,
        )
        return Answered(reply.id, prompt, reply.choices[0].message.content or "", _version_of(reply.model))

    def answered_by(self, prompt: str, version: int, timeout_s: float = 60) -> Answered:
        """`prompt` answered by `version`, asked again until the server's view of the alias reaches it."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.ask_one(prompt)
            if answer.version == version or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if answer.version != version:
            raise StoreError(
                f"{self.model} is still answered by v{answer.version} {timeout_s:.0f} s after v{version} took its alias",
                hint="read the model server's output above",
            )
        return answer

    def feedback(self, record_id: str, **values: Any) -> None:
        reply = self._ingest.post(f"/v1/records/{record_id}/feedback", json=values)
        if reply.status_code >= 300:
            raise StoreError(
                f"the ingest API refused feedback on record {record_id}: {reply.status_code} {reply.text[:200]}",
                hint="read the ingest server's output above",
            )

    def close(self) -> None:
        self._client.close()
        self._ingest.close()


def _version_of(served_model: str) -> int:
    """`NAME:VERSION`, as the server names the version that answered."""
    return int(served_model.rsplit(":", 1)[1])


@contextmanager
def served(rc: Any, config_file: str | None, model: str, *, system: str, max_tokens: int) -> Iterator[LiveTraffic]:
    """The ingest API and `tuneloop serve NAME` running (on free ports) for the duration; `model` is
    `NAME@ALIAS`."""
    from tuneloop.names import ModelRef
    from tuneloop.services import start_ingest_server, start_model_server, stop, wait_healthy
    from tuneloop.store.tokens import Scope

    host = rc.settings.server.host
    tokens = {scope: rc.stores.tokens.create(f"demo-{scope}-{uuid.uuid4().hex[:8]}", scope) for scope in Scope}
    ingest_url, serve_url = f"http://{host}:{_free_port(host)}", f"http://{host}:{_free_port(host)}"
    processes = []
    traffic = None
    try:
        processes.append(start_ingest_server(config_file, host, _port(ingest_url)))
        wait_healthy(ingest_url, processes[-1], path="/v1/health", what="the ingest API")
        name = ModelRef.parse(model).name
        processes.append(start_model_server(config_file, name, host, _port(serve_url), env=SERVE_ENV))
        wait_healthy(serve_url, processes[-1], path="/health", what=f"the model server of {name}")
        traffic = LiveTraffic(
            serve_url,
            tokens[Scope.SERVE],
            ingest_url,
            tokens[Scope.INGEST],
            model,
            system=system,
            max_tokens=max_tokens,
        )
        yield traffic
    finally:
        if traffic is not None:
            traffic.close()
        stop(*processes)


def _free_port(host: str) -> int:
    """A free port: a running `tuneloop up` may hold the configured ones."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
