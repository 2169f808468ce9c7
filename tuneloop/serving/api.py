"""`tuneloop serve NAME`: an OpenAI-compatible API over the registered versions of one model.

`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`. A request's `model` is
`NAME@ALIAS` or `NAME:VERSION` (default `NAME@champion`), resolved at most `serve.reload_seconds` ago.
Every answer is stored as a production record of the exact version that gave it before the response
leaves; the completion's `id` is the record id. Errors have OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`); options we do not support are refused naming the
`param`, unknown harmless fields are ignored. Every call needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import NotFound, Overloaded, TuneloopError
from tuneloop.names import Alias, ModelRef
from tuneloop.serving.batcher import Answer, Ask
from tuneloop.serving.host import Host

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


def create_app(settings: Any, name: str, host: Host | None = None) -> FastAPI:
    from tuneloop.monitors.ingestion.api import AcceptedTokens
    from tuneloop.registry.client import RegistryClient
    from tuneloop.registry.resolver import ModelResolver
    from tuneloop.serving.versions import fetch

    rc = RegistryClient(settings)
    rc.registered_model(name)  # fail at start, not at the first request, when NAME is not registered
    limits = settings.serve
    resolver = ModelResolver(rc.mlflow, ttl_seconds=limits.reload_seconds)
    host = host or Host(
        lambda n, v: fetch(rc, n, v),
        max_versions=limits.max_versions,
        max_batch=limits.max_batch,
        collect_ms=limits.collect_ms,
        max_queue=limits.max_queue,
        quantized_bases=limits.quantized_bases,
    )
    accepted = AcceptedTokens(rc.stores, [t.get_secret_value() for t in settings.ingest.tokens])
    holders: dict[str, int] = {}  # alias -> the version it last resolved to: kept loaded

    app = FastAPI(title=f"tuneloop serve {name}", version="1", docs_url=None, redoc_url=None)
    app.state.host = host  # whoever runs the app closes it (`tuneloop serve` does, after uvicorn stops)

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(TuneloopError)
    async def _on_error(request: Request, exc: TuneloopError) -> JSONResponse:
        status = 429 if isinstance(exc, Overloaded) else exc.http_status
        return ApiError(status, rc.settings.scrub(exc.message), code=exc.code).response()

    def authorise(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send `Authorization: Bearer TOKEN`", code="missing_token")
        if not accepted.valid(token.strip()):
            raise ApiError(401, "invalid or revoked token", code="invalid_api_key")

    async def parse(request: Request, model: type[_Generation]) -> Any:
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

    def resolve(ref: str | None) -> tuple[int, str | None]:
        ref = ref or f"{name}@{Alias.CHAMPION}"
        try:
            parsed = ModelRef.parse(ref)
        except TuneloopError:
            raise ApiError(404, f"`{ref}` is not NAME@ALIAS or NAME:VERSION", param="model", code="model_not_found")
        if parsed.name != name:
            raise ApiError(
                404, f"this server serves `{name}`, not `{parsed.name}`", param="model", code="model_not_found"
            )
        try:
            _, version, alias = resolver.resolve(ref)
        except NotFound as exc:
            raise ApiError(404, exc.message, param="model", code="model_not_found") from None
        if alias:
            holders[alias] = version
        return version, alias

    async def answer(request: Request, body: _Generation, prompts: list[str], chat: list[Message] | None) -> Any:
        authorise(request)
        version, alias = await run_in_threadpool(resolve, body.model)  # MLflow calls stay off the event loop
        keep = {(name, v) for v in holders.values()}
        servable = await run_in_threadpool(host.load, name, version, keep=keep)
        tokenizer = host.tokenizer(servable)
        if chat is not None:
            from tuneloop.pipelines.evaluation.generation import render_prompt

            prompts = [render_prompt(tokenizer, [{"role": m.role, "content": m.text()} for m in chat])]
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
        asks = [
            Ask(
                p,
                max_new_tokens=wanted,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                stop=body.stops(),
            )
            for p in prompts
        ]
        started = time.perf_counter()
        # submitting may wait for another version's load (the host's lock): never on the event loop
        futures = [await run_in_threadpool(host.submit, name, version, a, keep=keep) for a in asks]
        answers: list[Answer] = [await asyncio.wrap_future(f) for f in futures]
        latency_ms = (time.perf_counter() - started) * 1000
        record_ids = [f"cmpl-{uuid.uuid4().hex}" for _ in answers]
        from tuneloop.rowfiles import chat_prompt

        users = [chat_prompt([m.model_dump() | {"content": m.text()} for m in chat])] if chat is not None else prompts
        await run_in_threadpool(_capture, rc, name, version, alias, record_ids, users, answers, latency_ms, body, chat)
        return version, record_ids, answers

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "loaded": [f"{n}:{v}" for n, v in host.loaded()]}

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
        version, (record_id,), (result,) = await answer(request, body, [], body.messages)
        served, created = f"{name}:{version}", int(time.time())
        usage = _usage([result])
        if body.stream:
            return _stream(
                record_id, served, created, result, usage, bool((body.stream_options or {}).get("include_usage"))
            )
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }
        return {
            "id": record_id,
            "object": "chat.completion",
            "created": created,
            "model": served,
            "choices": [choice],
            "usage": usage,
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
        version, record_ids, results = await answer(request, body, prompts, None)
        choices = [
            {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
            for i, r in enumerate(results)
        ]
        return {
            "id": record_ids[0],
            "object": "text_completion",
            "created": int(time.time()),
            "model": f"{name}:{version}",
            "choices": choices,
            "usage": _usage(results),
        }

    return app


def _usage(answers: list[Answer]) -> dict[str, int]:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _stream(
    record_id: str, model: str, created: int, result: Answer, usage: dict[str, int], with_usage: bool
) -> StreamingResponse:
    """Server-sent events of one finished answer (the text comes as one chunk: the batcher hands back
    whole answers)."""

    def chunk(delta: dict[str, Any] | None, finish: str | None, **extra: Any) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None else []
        body = {
            "id": record_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""}, None)
        if result.text:
            yield chunk({"content": result.text}, None)
        yield chunk({}, result.finish_reason)
        if with_usage:
            yield chunk(None, None, usage=usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _capture(
    rc: Any,
    name: str,
    version: int,
    alias: str | None,
    record_ids: list[str],
    prompts: list[str],
    answers: list[Answer],
    latency_ms: float,
    body: _Generation,
    chat: list[Message] | None,
) -> None:
    """Store each answer as a production record of the version that gave it (one transaction)."""
    from tuneloop.store.records import NewRecord

    now = datetime.now(UTC)
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": body.stop}
    user = hashlib.sha256(body.user.encode()).hexdigest()[:16] if body.user else None
    messages = [m.model_dump() for m in chat] if chat is not None else None
    request = {"kind": "live", "messages": messages, "sampling": sampling, "user": user}
    batch: dict[str, Any] = {
        "model": name,
        "version": version,
        "alias": alias,
        "ts": now,
        "received_at": now,
        "latency_ms": latency_ms,
    }
    rows = [
        NewRecord(
            id=record_id,
            prompt=prompt,
            output=answer.text,
            prediction=answer.text,
            meta=request
            | {
                "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
                "finish_reason": answer.finish_reason,
            },
            **batch,
        )
        for record_id, prompt, answer in zip(record_ids, prompts, answers, strict=True)
    ]
    rc.stores.records.add_batch(rows, [], now)
