"""`charter serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with the constitutional guard.

Routes: `POST /v1/chat/completions` (streaming as server-sent events, or not), `GET /v1/models`,
`GET /health`. Every completion carries a `charter` object, `{"blocked", "direction", "principle",
"score"}`; so does the first streamed chunk (the input decision) and the chunk that carries an output
decision.

Security defaults: binds 127.0.0.1; an optional bearer key read from an environment variable (never from
the command line); request size, requests in flight and max_tokens are capped, each refusal an
OpenAI-style error body with its HTTP status (413, 503, 400); an upstream that fails answers 502, one that
times out 504. A request that fails never takes the server down with it.
"""
# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime, and
# `Request` is imported inside `create_app` so that importing this module stays light.
import asyncio
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .engines import Sampling, UpstreamError
from .guard import Guard, charter_field
from .pipeline import collect, guarded

log = logging.getLogger("charter")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Limits:
    max_request_bytes: int = 1 << 20
    """Largest request body accepted (413 above it)."""
    max_tokens: int = 1024
    """Largest `max_tokens` a request may ask for (400 above it)."""
    default_max_tokens: int = 256
    """`max_tokens` of a request that names none (capped by `max_tokens`)."""
    max_concurrent: int = 64
    """Requests in flight, queued ones included (503 above it)."""


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    stop: tuple = ()


def _num(body, key, lo, hi, default, kind=(int, float)):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, kind) or not lo <= v <= hi:
        raise APIError(400, f"'{key}' must be a number between {lo} and {hi}, got {json.dumps(v)[:40]}", param=key)
    return v


def parse_request(body, model_id: str, limits: Limits) -> ChatRequest:
    """Validate a chat completion request; every mistake is a 400 (404 for an unknown model)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (a string)", param="model")
    if model != model_id:
        raise APIError(404, f"The model '{model[:200]}' does not exist; this server serves '{model_id}'",
                       code="model_not_found", param="model")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}]: only text content parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        elif content is None and m["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}]: content must be a string", param=f"messages[{i}].content")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (`\ud800`) is valid JSON but no text a tokenizer takes
            raise APIError(400, f"messages[{i}]: content is not valid Unicode text",
                           param=f"messages[{i}].content") from None
        messages.append({"role": ROLES[m["role"]], "content": content})
    for key in ("tools", "functions"):
        if body.get(key):
            raise APIError(400, f"'{key}' is not supported by this server", param=key)
    if body.get("n", 1) != 1:
        raise APIError(400, "'n' must be 1", param="n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"'{key}' must be a positive integer", param=key)
    elif max_tokens > limits.max_tokens:
        raise APIError(400, f"'{key}' is {max_tokens}, above this server's limit of {limits.max_tokens}",
                       param=key, code="max_tokens_exceeded")
    temperature = _num(body, "temperature", 0, 2, 0.7)
    top_p = _num(body, "top_p", 0, 1, 0.95)
    seed = _num(body, "seed", -(2 ** 63), 2 ** 63 - 1, None, int)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    return ChatRequest(messages, Sampling(max_tokens, float(temperature), float(top_p), seed), stream,
                       bool(opts.get("include_usage")), tuple(stop))


def create_app(engine, guard: Guard | None, model_id: str, limits: Limits | None = None,
               api_key: str | None = None, guard_label: str = "none"):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    app = FastAPI(title="charter", docs_url=None, redoc_url=None, openapi_url=None)
    # Scoring waits on the batching scorer, so give every request in flight a thread of its own.
    pool = ThreadPoolExecutor(max_workers=limits.max_concurrent + 2, thread_name_prefix="charter-guard")
    state = {"inflight": 0, "served": 0, "started": int(time.time())}
    expected = f"Bearer {api_key}".encode() if api_key else None

    def error(e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return error(APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        log.exception("request failed")
        return error(APIError(500, "internal server error", type="server_error"))

    def authorize(request: Request):
        if expected is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_request_bytes:
            raise APIError(413, f"request body of {size} bytes is above this server's limit of "
                                f"{limits.max_request_bytes} bytes", code="request_too_large")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limits.max_request_bytes:
                raise APIError(413, f"request body is above this server's limit of {limits.max_request_bytes} "
                                    "bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "guard": guard_label, "in_flight": state["inflight"],
                "served": state["served"]}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": state["started"],
                                            "owned_by": "charter"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        if state["inflight"] >= limits.max_concurrent:
            raise APIError(503, f"server busy: {limits.max_concurrent} requests in flight; retry shortly",
                           type="server_error", code="overloaded", headers={"Retry-After": "1"})
        state["inflight"] += 1
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                state["inflight"] -= 1
                state["served"] += 1

        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
                raise APIError(400, "the request body is not valid JSON") from None
            req = parse_request(body, model_id, limits)
            rid = "chatcmpl-" + uuid.uuid4().hex[:24]
            created = int(time.time())
            events = guarded(engine, guard, req.messages, req.sampling, rid, req.stop, pool)
            head = {"id": rid, "created": created, "model": model_id}
            if not req.stream:
                try:
                    res = await collect(events)
                except UpstreamError as e:
                    raise APIError(e.status, e.message, type="upstream_error") from None
                release()
                return JSONResponse({
                    **head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": res["text"]},
                                 "logprobs": None, "finish_reason": res["finish_reason"]}],
                    "usage": res["usage"], "charter": charter_field(res["decisions"], guard is not None)},
                    headers={"x-request-id": rid})
            # Run up to the first text before answering, so a request that fails before any output (an
            # upstream that is down) gets its real status instead of a 200 with an error inside.
            first = []
            try:
                async for ev in events:
                    first.append(ev)
                    if ev.kind in ("text", "block", "end"):
                        break
            except UpstreamError as e:
                await events.aclose()
                raise APIError(e.status, e.message, type="upstream_error") from None
            return StreamingResponse(_sse(head, first, events, guard is not None, req.include_usage, release),
                                     media_type="text/event-stream",
                                     headers={"x-request-id": rid, "Cache-Control": "no-cache"})
        except BaseException:
            release()
            raise

    app.state.charter = state
    return app


def _chunk(head, delta, finish_reason=None, charter=None) -> str:
    obj = {**head, "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if charter is not None:
        obj["charter"] = charter
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(head, first, events, guarded_: bool, include_usage: bool, release):
    decisions, sent_text = [], False
    try:
        async def all_events():
            for ev in first:
                yield ev
            async for ev in events:
                yield ev

        async for ev in all_events():
            if ev.kind == "start":
                if ev.decision is not None:
                    decisions.append(ev.decision)
                yield _chunk(head, {"role": "assistant", "content": ""}, charter=charter_field(decisions, guarded_))
            elif ev.kind == "text":
                sent_text = True
                yield _chunk(head, {"content": ev.text})
            elif ev.kind == "block":
                decisions.append(ev.decision)
                yield _chunk(head, {"content": ("\n\n" if sent_text else "") + ev.text},
                             charter=charter_field(decisions, guarded_))
            elif ev.kind == "end":
                if ev.decision is not None and all(ev.decision is not d for d in decisions):
                    decisions.append(ev.decision)
                yield _chunk(head, {}, ev.finish_reason, charter=charter_field(decisions, guarded_))
                if include_usage:
                    usage = {**head, "object": "chat.completion.chunk", "choices": [], "usage": ev.usage}
                    yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    except UpstreamError as e:
        yield f"data: {json.dumps(APIError(e.status, e.message, type='upstream_error').body())}\n\n"
    except asyncio.CancelledError:  # the client left: stop generating for it
        raise
    except Exception:
        log.exception("streaming failed")
        yield f"data: {json.dumps(APIError(500, 'internal server error', type='server_error').body())}\n\n"
    finally:
        await events.aclose()
        release()


def serve(app, host: str = "127.0.0.1", port: int = 8000):
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
