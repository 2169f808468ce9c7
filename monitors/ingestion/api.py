"""The ingest API: `POST /v1/records` (one record or `{"records": [...]}`), feedback by record id.

An ASGI app (FastAPI, served by uvicorn). Every write needs `Authorization: Bearer TOKEN`; a request
is acknowledged only after its transaction commits, and an `Idempotency-Key` header makes a retried
request return the first answer without storing anything again. Bad input gets a 4xx naming the
problem, and nothing from that request is stored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tuneloop.errors import InvalidInput, TuneloopError
from tuneloop.monitors.ingestion import records as records_io
from tuneloop.store.tokens import Scope


def create_app(settings: Any) -> FastAPI:
    from tuneloop.registry.client import RegistryClient

    rc = RegistryClient(settings)
    resolver = rc.models
    accepted = rc.stores.tokens.accepted(settings.configured_tokens())
    limits = settings.ingest
    app = FastAPI(title="tuneloop ingest", version="1", docs_url="/docs", redoc_url=None)

    def problem(status: int, message: str, hint: str = "") -> JSONResponse:
        return JSONResponse({"error": message, "hint": hint}, status_code=status)

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise _HttpProblem(
                413,
                f"body of {int(declared):,} bytes is over the limit of {limits.max_body_bytes:,}",
                "send smaller batches",
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise _HttpProblem(
                    413, f"body is over the limit of {limits.max_body_bytes:,} bytes", "send smaller batches"
                )
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _HttpProblem(400, f"body is not valid UTF-8 (byte {exc.start})", "send UTF-8 encoded JSON") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _HttpProblem(
                400,
                f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                'send one record object, or {"records": [...]}',
            ) from None

    def authorise(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _HttpProblem(401, "missing bearer token", "send `Authorization: Bearer TOKEN`")
        scope = accepted.scope_of(token.strip())
        if scope is None:
            raise _HttpProblem(
                401, "invalid or revoked token", "create one with `tuneloop tokens create NAME --scope ingest`"
            )
        if scope is not Scope.INGEST:
            raise _HttpProblem(
                403,
                f"this token has scope `{scope}`; posting records or feedback needs scope `ingest`",
                "create one with `tuneloop tokens create NAME --scope ingest`",
            )

    @app.exception_handler(_HttpProblem)
    async def _on_problem(request: Request, exc: _HttpProblem) -> JSONResponse:
        return problem(exc.status, exc.message, exc.hint)

    @app.exception_handler(TuneloopError)
    async def _on_error(request: Request, exc: TuneloopError) -> JSONResponse:
        return problem(exc.http_status, exc.message, exc.hint or "")

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/records")
    async def post_records(request: Request) -> JSONResponse:
        authorise(request)
        payload = await read_json(request)
        items = _items(payload, limits.max_batch)
        parsed = records_io.parse_records(items, limits.max_text_chars)
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= 200):
            raise _HttpProblem(400, "`Idempotency-Key` must be 1-200 characters")
        result = await run_in_threadpool(records_io.store, rc.stores, parsed, resolver, idempotency_key=key)
        return JSONResponse(result.as_dict(), status_code=200 if result.replayed else 201)

    @app.post("/v1/records/{record_id}/feedback")
    async def post_feedback(record_id: str, request: Request) -> JSONResponse:
        authorise(request)
        payload = await read_json(request)
        try:
            if isinstance(payload, dict) and "reference_answer" in payload and "reference" not in payload:
                payload = {("reference" if k == "reference_answer" else k): v for k, v in payload.items()}
            feedback = records_io.Feedback.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(f"invalid feedback: {exc}", hint="send {rating?, label?, reference?}") from None
        await run_in_threadpool(records_io.add_feedback, rc.stores, record_id, feedback)
        return JSONResponse({"record_id": record_id, "stored": True}, status_code=201)

    return app


class _HttpProblem(Exception):
    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def _items(payload: Any, max_batch: int) -> list[Any]:
    if isinstance(payload, dict) and "records" in payload and set(payload) == {"records"}:
        items = payload["records"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("`records` must be a non-empty list", hint="send at least one record")
    elif isinstance(payload, dict):
        items = [payload]
    else:
        raise InvalidInput('the body must be a JSON object: one record, or {"records": [...]}', hint="see /docs")
    if len(items) > max_batch:
        raise _HttpProblem(
            413, f"{len(items):,} records in one request, over the limit of {max_batch:,}", "split the batch"
        )
    return items


def serve(settings: Any, host: str | None = None, port: int | None = None) -> None:
    """Run the API in this process until interrupted."""
    from tuneloop.services import run_http

    run_http(create_app(settings), host or settings.server.host, port or settings.ingest.port)
