"""An OpenAI-compatible HTTP API: `/v1/chat/completions` (plain and SSE streaming), `/v1/models`,
`/health`.

- Every request is checked in full (each sampling value, the prompt plus `max_tokens`
  against the model's context, unknown fields refused as OpenAI refuses them) before
  anything is generated or streamed: a bad one gets a 400 naming `param`.
- Every error is answered in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
- Requests queue in arrival order on the generator's worker (`tunesmith.model.generate`);
  a full queue answers 429. A client that goes away (streaming or not) cancels its
  generation within a token; SIGTERM / SIGINT cancel everything and stop the server.
- `/openapi.json` describes the request and response bodies.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tunesmith.errors import UserError
from tunesmith.model.generate import (
    Answer,
    Generator,
    GeneratorBusy,
    Handle,
    Sampling,
    SamplingError,
    lone_surrogate,
)

MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS = 512
INT64 = 2**63


def _unicode_text(value: str) -> str:
    """Refuse a lone UTF-16 surrogate ("\\ud800" in the JSON body): not Unicode text, and
    the tokenizer fails on it (an HTTP 500 before)."""
    if bad := lone_surrogate(value):
        raise ValueError(f"holds a lone surrogate ({bad}): not valid Unicode text")
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = "text"
    text: Text = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ...: not used here
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = Field("", validate_default=True)

    @field_validator("content")
    @classmethod
    def _content(cls, value, info):
        # OpenAI allows a null content only on an assistant message (one with tool calls);
        # a user message without text leaves nothing to answer
        role = info.data.get("role", "assistant")
        if value is None and role != "assistant":
            raise ValueError(
                "content is null; only an assistant message may leave it out: give a string "
                "or a list of text parts"
            )
        text = "".join(p.text for p in value) if isinstance(value, list) else value or ""
        if role == "user" and not text.strip():
            raise ValueError("content is empty; a user message needs text to answer")
        return value

    def as_dict(self) -> dict:
        content = self.content or ""
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = "text"


def _unsupported(name: str):
    def check(value):
        if value:
            raise ValueError(f"{name} is not supported by this server")
        return value

    return field_validator(name)(lambda cls, v: check(v))


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields it does not know are refused (as OpenAI
    does), fields it knows but this server cannot honour are refused when set."""

    model_config = ConfigDict(extra="forbid")
    model: Text
    messages: list[Message] = Field(min_length=1, max_length=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, allow_inf_nan=False, ge=0, le=2)
    top_p: float | None = Field(None, allow_inf_nan=False, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT64 - 1)
    repetition_penalty: float | None = Field(None, allow_inf_nan=False, ge=0.01, le=100)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # One stop string of any length, or a list of at most 4 (OpenAI's limit). A bare
    # `max_length=4` on the union would also cap the length of a single string.
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1)
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    frequency_penalty: float | None = Field(None, allow_inf_nan=False, ge=-2, le=2)
    presence_penalty: float | None = Field(None, allow_inf_nan=False, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    _no_frequency = _unsupported("frequency_penalty")
    _no_presence = _unsupported("presence_penalty")
    _no_logprobs = _unsupported("logprobs")
    _no_top_logprobs = _unsupported("top_logprobs")
    _no_logit_bias = _unsupported("logit_bias")
    _no_tools = _unsupported("tools")

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        words = [value] if isinstance(value, str) else list(value or [])
        if any(not w for w in words):
            raise ValueError("stop strings must be non-empty")
        return value

    def stop_words(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunesmith"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    queued: int = Field(description="requests waiting or being answered")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "a bad request; `param` names the field"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "request body too large"),
        (429, "too many requests waiting"),
    ]
}
SSE = {
    200: {
        "description": "a chat.completion, or with `stream: true` server-sent "
        "chat.completion.chunk events ending with `data: [DONE]`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class APIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status, as OpenAI does."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def create_app(
    generator: Generator,
    model_name: str,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        return APIError(500, f"internal error: {exc}", "server_error").response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        ok = scheme.lower() == "bearer" and secrets.compare_digest(
            given.strip().encode(), api_key.encode()
        )
        if not ok:
            raise APIError(
                401,
                "missing or wrong API key: send `Authorization: Bearer KEY`",
                code="invalid_api_key",
            )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(queued=generator.queued)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    async def list_models(request: Request) -> ModelList:
        check_key(request)
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**ERRORS, **SSE},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_key(request)
        if body.model != model_name:
            raise APIError(
                404,
                f"model '{body.model}' does not exist; this server serves "
                f"'{model_name}' (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        messages = [m.as_dict() for m in body.messages]
        prompt_ids = await run_in_threadpool(generator.prompt_ids, messages)
        sampling = _sampling(body, len(prompt_ids), generator.context_length)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        try:
            handle = generator.submit(messages, sampling, _waker(loop, wake), prompt_ids)
        except SamplingError as exc:
            param = body.max_tokens_param() if exc.param == "max_new_tokens" else exc.param
            raise APIError(400, str(exc), param=param) from exc
        except GeneratorBusy as exc:
            raise APIError(429, str(exc), code="server_busy", headers={"Retry-After": "1"}) from exc
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _sse(handle, wake, completion_id, model_name, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        try:
            text = "".join([piece async for piece in _pieces(handle, wake)])
        finally:
            watcher.cancel()
        answer = handle.answer
        if answer.finish_reason == "cancelled":
            raise APIError(
                503, "the generation was cancelled (the server is stopping)", "server_error"
            )
        return ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=model_name,
            choices=[Choice(index=0, message=ChatMessage(content=text), finish_reason=answer.finish_reason)],
            usage=_usage(answer),
        )  # fmt: skip

    return app


def _sampling(body: ChatCompletionRequest, prompt_tokens: int, context: int | None) -> Sampling:
    """The request's sampling values; max_tokens defaults to what fits in the context."""
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None:
        room = (context - prompt_tokens) if context else DEFAULT_MAX_TOKENS
        max_tokens = max(1, min(DEFAULT_MAX_TOKENS, room))
    values = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
        "seed": None if body.seed is None else body.seed % 2**64,
    }
    try:
        return Sampling(
            max_new_tokens=max_tokens,
            stop=body.stop_words(),
            **{k: v for k, v in values.items() if v is not None},
        )
    except SamplingError as exc:
        param = body.max_tokens_param() if exc.param == "max_new_tokens" else exc.param
        raise APIError(400, str(exc), param=param) from exc


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first error as OpenAI's 400. For a union field (`stop`, a message's `content`)
    pydantic reports each branch; the one that is not a plain type mismatch says what is
    wrong with the value given, and the branch names leave the `param` path."""
    errors = exc.errors()
    first = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0])
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_branch(p)]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('msg')}")
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    message = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {message}" if param else message, param=param)


def _union_branch(part) -> bool:
    """A union member's tag in a pydantic error location ("str", "list[str]", "ContentPart",
    "function-after[...]"), not a field name or list index."""
    if not isinstance(part, str):
        return False
    return (
        part in ("str", "int", "float", "bool", "list", "dict")
        or not part.isidentifier()
        or part[:1].isupper()
    )


def _waker(loop: asyncio.AbstractEventLoop, wake: asyncio.Event):
    def notify() -> None:
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop has closed (shutdown): nobody is waiting
            pass

    return notify


async def _pieces(handle: Handle, wake: asyncio.Event) -> AsyncIterator[str]:
    """The handle's text pieces, waiting without blocking the event loop; leaving early
    (a disconnect cancels the task that iterates) cancels the generation."""
    try:
        while True:
            piece = handle.next_piece()
            if piece is None:
                break
            if piece == "":
                await wake.wait()
                wake.clear()
                continue
            yield piece
    finally:
        handle.cancel()
    if handle.error is not None:
        raise handle.error


async def _cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """After the body is read, the next ASGI message is the client going away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


def _usage(answer: Answer) -> Usage:
    return Usage(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        total_tokens=answer.prompt_tokens + answer.completion_tokens,
    )


async def _sse(
    handle: Handle, wake: asyncio.Event, completion_id: str, model_name: str, include_usage: bool
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in _pieces(handle, wake):
            yield chunk({"content": piece})
    except Exception as exc:  # headers are sent: the error goes into the stream
        yield f"data: {json.dumps(APIError(500, str(exc), 'server_error').body)}\n\n"
        return
    answer = handle.answer
    if answer.finish_reason == "cancelled":
        error = APIError(
            503, "the generation was cancelled (the server is stopping)", "server_error"
        )
        yield f"data: {json.dumps(error.body)}\n\n"
        return
    yield chunk({}, answer.finish_reason)
    if include_usage:
        usage = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [],
            "usage": _usage(answer).model_dump(),
        }
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


class _BodyLimit:
    """Refuses a request body over `limit` bytes with 413, by its Content-Length or while
    it arrives, before it is parsed."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(
                        413, f"request body is over the limit of {self.limit} bytes"
                    )
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        error = APIError(
            413, f"request body is over the limit of {self.limit} bytes", code="request_too_large"
        )
        body = json.dumps(error.body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn's server, cancelling every generation on SIGTERM / SIGINT so open streams
    end at once and shutdown takes seconds, not the length of the longest answer."""

    def __init__(self, config: uvicorn.Config, generator: Generator):
        super().__init__(config)
        self.generator = generator

    def handle_exit(self, sig, frame) -> None:
        self.generator.cancel_all()
        super().handle_exit(sig, frame)


def check_address(host: str, port: int) -> None:
    """`host:port` can be bound now (as uvicorn binds it), checked before the model loads."""
    import errno
    import socket

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(
            f"--host {host}: not a known host name or address ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{where} is in use: pick another --port") from None
            if exc.errno == errno.EACCES:
                raise UserError(
                    f"{where}: permission denied (ports below 1024 need root): pick another --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"--host {host}: not an address of this machine (try 127.0.0.1 or 0.0.0.0)"
                ) from None
            raise UserError(f"{where}: cannot listen there ({exc.strerror})") from None


def serve(
    generator: Generator,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
) -> None:
    """Run the API until SIGTERM / SIGINT."""
    app = create_app(generator, model_name=model_name, api_key=api_key)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5
    )
    _Server(config, generator).run()
