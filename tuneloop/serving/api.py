"""`tuneloop serve NAME`: an OpenAI-compatible API over the registered versions of one model.

`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`. A request's `model` is
`NAME@ALIAS` or `NAME:VERSION` (default `NAME@champion`), resolved at most `serve.reload_seconds` ago.
Every answer is stored as a production record of the exact version that gave it before the response
leaves (for a stream, before `[DONE]`); the completion's `id` is the record id. A stream sends text as
it is generated; one its client cuts is stored with what was sent, `finish_reason: "cancelled"`. Errors have OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`); options we do not support are refused naming the
`param`, unknown harmless fields are ignored. Every call needs `Authorization: Bearer TOKEN` of a token
with scope `serve` (no token or an unknown one: 401; another scope: 403).

The model's traffic policy (`tuneloop traffic set`) splits the requests for `NAME@champion`: a canary
share is answered by the challenger (records `kind: canary`), and a shadow share is also answered by the
challenger after the caller got the champion's answer, in spare capacity (records `kind: shadow`,
`pair_of` the live record's id). An alias the policy names that has no holder leaves the champion alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import Overloaded, TuneloopError
from tuneloop.names import Alias
from tuneloop.serving.batcher import Answer, Ask
from tuneloop.serving.capture import Recorder, records_of
from tuneloop.serving.capture import Request as Captured
from tuneloop.serving.host import Host
from tuneloop.serving.routing import RouteError, Router, VersionUnavailable
from tuneloop.serving.split import TrafficSplit
from tuneloop.store.records import RecordKind
from tuneloop.store.tokens import Scope

# Options the OpenAI API has and this server does not: refused by name rather than silently ignored.
_UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "best_of": lambda v: v not in (None, 1),
    "tools": bool,
    "tool_choice": lambda v: v is not None,
    "functions": bool,
    "function_call": lambda v: v is not None,
    "logprobs": lambda v: v not in (None, False),
    "top_logprobs": lambda v: v is not None,
    "logit_bias": bool,
    "response_format": lambda v: v not in (None, {"type": "text"}),
    "audio": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
    "prediction": lambda v: v is not None,
    "echo": bool,
    "suffix": lambda v: v is not None,
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"Retry-After": "1"} if self.status == 429 else {}
        if self.status in (400, 401, 403, 404):
            headers["x-should-retry"] = "false"
        return JSONResponse(body, status_code=self.status, headers=headers)


class _Text(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Text]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "`stop` takes up to 4 non-empty strings", param="stop")
        return tuple(stops)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Generation):
    prompt: str | list[str]


@dataclass
class _Plan:
    """A validated request, routed: what to generate, on which version, and what to record."""

    version: int
    asks: list[Ask]
    prompts: list[str]  # as records store them: for chat, the user turns joined
    captured: Captured
    shadow: str | None = None  # the alias that also answers, unseen, once the caller has its answer


def create_app(settings: Any, name: str, host: Host | None = None, *, address: str = "in-process") -> FastAPI:
    from tuneloop.registry.client import RegistryClient
    from tuneloop.registry.resolver import ModelResolver
    from tuneloop.serving.production import Production
    from tuneloop.serving.versions import fetch

    rc = RegistryClient(settings)
    rc.registered_model(name)  # fail at start, not at the first request, when NAME is not registered
    limits = settings.serve
    host = host or Host(
        lambda n, v: fetch(rc, n, v),
        max_versions=limits.max_versions,
        max_batch=limits.max_batch,
        collect_ms=limits.collect_ms,
        max_queue=limits.max_queue,
        quantized_bases=limits.quantized_bases,
    )
    resolver = ModelResolver(rc.mlflow, ttl_seconds=limits.reload_seconds)
    router = Router(name, resolver, host, rc.stores, settings.scrub)
    recorder = Recorder(rc.stores.records, enabled=limits.capture)
    accepted = rc.stores.tokens.accepted(settings.configured_tokens())
    split = TrafficSplit(name, lambda n: rc.stores.traffic.get(n).policy, ttl_seconds=limits.reload_seconds)
    shadows = ThreadPoolExecutor(1, thread_name_prefix="tuneloop-shadow")  # routes (maybe loads) off the callers' path
    production = Production(rc, name, address, recorder, split)

    app = FastAPI(title=f"tuneloop serve {name}", version="1", docs_url=None, redoc_url=None)

    def close() -> None:
        """Stop in order: shadow work already routed reaches its batcher, running batches finish, their records
        are written, then exported, and the serving run logs its last figures."""
        shadows.shutdown(wait=True)
        host.close()
        recorder.close()
        production.close()

    app.state.close = close  # whoever runs the app calls it (`tuneloop serve` does)
    app.state.host, app.state.split = host, split

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(TuneloopError)
    async def _on_error(request: Request, exc: TuneloopError) -> JSONResponse:
        status = 429 if isinstance(exc, Overloaded) else exc.http_status
        param = "model" if isinstance(exc, RouteError) else None
        return ApiError(status, rc.settings.scrub(exc.message), param=param, code=exc.code).response()

    def authorise(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send `Authorization: Bearer TOKEN`", code="missing_token")
        scope = accepted.scope_of(token.strip())
        if scope is None:
            raise ApiError(401, "invalid or revoked token", code="invalid_api_key")
        if scope is not Scope.SERVE:
            raise ApiError(
                403,
                f"this token has scope `{scope}`; calling the model needs scope `serve` "
                "(`tuneloop tokens create NAME --scope serve`)",
                code="insufficient_scope",
            )

    async def parse(request: Request, model: type[_Generation]) -> Any:
        authorise(request)
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        for param, refused in _UNSUPPORTED.items():
            if param in payload and refused(payload[param]):
                raise ApiError(400, f"`{param}` is not supported by tuneloop serve", param=param, code="unsupported")
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(400, f"`{where}`: {first['msg']}", param=where, code="invalid_value") from None

    def plan(body: _Generation, prompts: list[str], chat: list[Message] | None) -> _Plan:
        """Route and check a request (MLflow calls and loads: run it off the event loop)."""
        version, alias, servable = router.route(body.model)
        kind, asked, shadow = RecordKind.LIVE, None, None
        if alias == Alias.CHAMPION:
            canary = split.canary_alias(body.user)
            routed = _holder(canary) if canary else None
            if routed is not None and routed[0] != version:
                kind, asked, (version, alias, servable) = RecordKind.CANARY, Alias.CHAMPION, routed
            else:
                shadow = split.shadow_alias()
        tokenizer = host.tokenizer(servable)
        messages = [{"role": m.role, "content": m.text()} for m in chat] if chat is not None else None
        if messages is not None:
            from tuneloop.pipelines.evaluation.generation import render_prompt

            prompts = [render_prompt(tokenizer, messages)]
        wanted = body.max_completion_tokens or body.max_tokens or limits.max_tokens
        if wanted > limits.max_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(400, f"`{param}` {wanted} is over this server's limit of {limits.max_tokens}", param=param)
        for prompt in prompts:
            length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if length > limits.max_prompt_tokens:
                raise ApiError(
                    400,
                    f"the prompt is {length} tokens, over this server's limit of {limits.max_prompt_tokens}",
                    param="messages" if chat is not None else "prompt",
                    code="context_length_exceeded",
                )
        stop = body.stops()
        asks = [
            Ask(p, max_new_tokens=wanted, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop)
            for p in prompts
        ]
        from tuneloop.rowfiles import chat_prompt

        sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": body.stop}
        captured = Captured(name, version, alias, sampling, body.user, messages, kind=kind, asked=asked)
        return _Plan(version, asks, [chat_prompt(messages)] if messages is not None else prompts, captured, shadow)

    def _holder(alias: str) -> tuple[int, str | None, Any] | None:
        """(version, alias, servable) of `alias`'s holder, or None when it has none or cannot be loaded."""
        try:
            return router.route(f"{name}@{alias}")
        except (RouteError, VersionUnavailable):
            return None

    def shadow_after(plan_: _Plan, live_ids: list[str]) -> None:
        """Once the live answers are stored: the shadow alias's holder answers the same asks, as spare work."""
        if plan_.shadow is None:
            return
        split.shadow_counts.add(sampled=len(live_ids))
        shadows.submit(_shadow, plan_, live_ids)

    def _shadow(plan_: _Plan, live_ids: list[str]) -> None:
        routed = _holder(plan_.shadow or "")
        if routed is None or routed[0] == plan_.version:  # nobody else to ask: nothing to compare
            split.shadow_counts.add(dropped=len(live_ids))
            return
        version, alias = routed[0], routed[1]
        captured = Captured(
            name, version, alias, plan_.captured.sampling, plan_.captured.user, plan_.captured.messages,
            kind=RecordKind.SHADOW, asked=plan_.captured.alias,
        )  # fmt: skip
        for ask, prompt, live_id in zip(plan_.asks, plan_.prompts, live_ids, strict=True):
            started = time.perf_counter()

            def store(done: Future[Answer], prompt: str = prompt, live_id: str = live_id, t0: float = started) -> None:
                if done.exception() is not None:
                    split.shadow_counts.add(dropped=1)
                    return
                ms = (time.perf_counter() - t0) * 1000
                rows = records_of(captured, [f"cmpl-{uuid.uuid4().hex}"], [prompt], [done.result()], ms, [live_id])
                production.keep(rows).add_done_callback(
                    lambda w: split.shadow_counts.add(answered=int(not w.exception()))
                )

            try:
                host.submit(name, version, ask, keep=router.keep(), spare=True).add_done_callback(store)
            except Exception:  # noqa: BLE001 - a shadow answer is never worth an error
                split.shadow_counts.add(dropped=1)

    async def answered(request: Request, plan_: _Plan) -> tuple[list[str], list[Answer]]:
        """Generate, then store the answers; a client that leaves first cancels its rows (nothing stored)."""
        started, leave = time.perf_counter(), threading.Event()
        keep = router.keep()

        def submit_all() -> list[Future[Answer]]:  # may wait for another version's load: not on the event loop
            try:
                return [host.submit(name, plan_.version, a, keep=keep, cancel=leave) for a in plan_.asks]
            except Overloaded:
                leave.set()  # the prompts already queued are not generated for nobody
                production.figures.rejected(plan_.version)
                raise

        futures = [asyncio.wrap_future(f) for f in await run_in_threadpool(submit_all)]
        pending = set(futures)
        with production.counting_failures(plan_.version):
            while pending:
                _, pending = await asyncio.wait(pending, timeout=0.25)
                if pending and await request.is_disconnected():
                    leave.set()
            answers = [f.result() for f in futures]
            if leave.is_set():
                raise ApiError(499, "the client closed the request", code="client_closed")
            ids = [f"cmpl-{uuid.uuid4().hex}" for _ in answers]
            rows = records_of(plan_.captured, ids, plan_.prompts, answers, (time.perf_counter() - started) * 1000)
            await asyncio.wrap_future(production.keep(rows))
        shadow_after(plan_, ids)
        return ids, answers

    async def stream(plan_: _Plan, with_usage: bool) -> StreamingResponse:
        """Server-sent events as the answer is generated; its record is durable before `[DONE]`."""
        loop, leave, pieces = asyncio.get_running_loop(), threading.Event(), asyncio.Queue[str | None]()
        record_id, served, created = f"cmpl-{uuid.uuid4().hex}", f"{name}:{plan_.version}", int(time.time())
        started = time.perf_counter()

        def push(piece: str) -> None:  # on the model thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        with production.counting_failures(plan_.version):
            future = await run_in_threadpool(
                lambda: host.submit(name, plan_.version, plan_.asks[0], keep=router.keep(), on_text=push, cancel=leave)
            )
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))

        def chunk(delta: dict[str, Any] | None, finish: str | None, **extra: Any) -> str:
            choices = (
                [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None else []
            )
            document = {"id": record_id, "object": "chat.completion.chunk", "created": created, "model": served}
            return f"data: {json.dumps(document | {'choices': choices} | extra)}\n\n"

        def record(answer: Answer) -> Future[None]:
            latency_ms = (time.perf_counter() - started) * 1000
            return production.keep(records_of(plan_.captured, [record_id], plan_.prompts, [answer], latency_ms))

        def store_cut(sent: str) -> None:
            def after(done: Future[Answer]) -> None:
                if not done.exception():
                    answer = done.result()
                    record(Answer(sent, answer.prompt_tokens, answer.completion_tokens, "cancelled", answer.batch_rows))

            future.add_done_callback(after)

        async def events() -> AsyncIterator[str]:
            sent, finished = [], False
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                while (piece := await pieces.get()) is not None:
                    sent.append(piece)
                    yield chunk({"content": piece}, None)
                error = future.exception()
                if error is not None:
                    finished = True
                    production.figures.failed(plan_.version)
                    message = rc.settings.scrub(getattr(error, "message", str(error)))
                    yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                    return
                answer = future.result()
                if rest := answer.text[len("".join(sent)) :]:  # held back until the end (a stop string's start)
                    yield chunk({"content": rest}, None)
                await asyncio.wrap_future(record(answer))
                shadow_after(plan_, [record_id])
                finished = True
                yield chunk({}, answer.finish_reason)
                if with_usage:
                    yield chunk(None, None, usage=_usage([answer]))
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away: end its row, store what it received
                    leave.set()
                    store_cut("".join(sent))

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": name,
            "loaded": [f"{n}:{v}" for n, v in host.loaded()],
            "traffic": split.policy().summary(),
            "shadow": split.shadow_counts.as_dict(),
            "traces": production.trace_counts(),
        }

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        authorise(request)
        aliases = rc.registered_model(name).aliases or {}
        ids = [f"{name}@{a}" for a in sorted(aliases)] + [f"{n}:{v}" for n, v in host.loaded()]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "tuneloop"} for i in ids],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await parse(request, ChatRequest)
        plan_ = await run_in_threadpool(plan, body, [], body.messages)
        if body.stream:
            return await stream(plan_, bool((body.stream_options or {}).get("include_usage")))
        (record_id,), (result,) = await answered(request, plan_)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }
        return {
            "id": record_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{name}:{plan_.version}",
            "choices": [choice],
            "usage": _usage([result]),
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await parse(request, CompletionRequest)
        if body.stream:
            raise ApiError(
                400, "`stream` is supported on /v1/chat/completions only", param="stream", code="unsupported"
            )
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "`prompt` is empty", param="prompt")
        plan_ = await run_in_threadpool(plan, body, prompts, None)
        record_ids, results = await answered(request, plan_)
        choices = [
            {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
            for i, r in enumerate(results)
        ]
        return {
            "id": record_ids[0],
            "object": "text_completion",
            "created": int(time.time()),
            "model": f"{name}:{plan_.version}",
            "choices": choices,
            "usage": _usage(results),
        }

    return app


def _usage(answers: list[Answer]) -> dict[str, int]:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
