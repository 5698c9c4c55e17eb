"""OpenAI's chat API over the personas, for tools that speak it (the OpenAI SDKs, Open WebUI,
LibreChat, editors' assistants): `GET /v1/models` and `POST /v1/chat/completions`.

A persona is a model: `model` is a persona key the API key's user may use (built-in, of
ROLES_FILE, or their own), and the persona's system prompt replaces the request's system
messages. The model that answers is the persona's pinned model, else the default one.

- **With `X-Session-Id`** (a session of the key's user, from POST /chat/start) the server's
  memory is used: only the request's last user message is taken, and it is sent as a turn
  of that session, exactly as POST /chat/stream sends it (the same prompt window, the same
  404/409/429 rules, the turn stored; a client that goes away does not stop it).
- **Without it** the request's own user and assistant messages follow the persona's system
  prompt, oldest dropped first when they do not fit the model, and nothing is stored: a
  one-off answer (`TurnService.start_one_off`), with a turn's time limits, MAX_ANSWER_CHARS
  and the user's rate and concurrency limits. A client that goes away stops it.

Either way the route reads the same events as an SSE client (`start`, `chunk`..., `end` or
`error`) and only reshapes them: into `chat.completion.chunk` objects for `stream: true`,
or into one `chat.completion`. Only API keys are accepted here (a cookie is no identity on
/v1), and every error is in OpenAI's shape (`web.errors`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header

from personachat.errors import ChatError, PersonaNotFound, UnknownRole
from personachat.personas import PersonaEntry
from personachat.readers import Events, TurnResult, close_reader, collect
from personachat.turns import OneOffRequest, TurnRequest
from personachat.web.craft_schemas import CLIENT_MESSAGE_ID_PATTERN
from personachat.web.deps import ApiKeyIdentityDep, PersonasDep, ServicesDep
from personachat.web.errors import openai_error
from personachat.web.openai_schemas import (
    OPENAI_ERRORS,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelList,
    ModelNotFound,
    ModelObject,
    Usage,
)
from personachat.web.sse import EventSourceResponse, event_stream

router = APIRouter(prefix="/v1", tags=["openai"], responses=OPENAI_ERRORS)

SessionHeader = Annotated[
    str | None,
    Header(
        alias="X-Session-Id",
        description="A session of the key's user (POST /chat/start): the server's memory is used and the turn is "
        "stored; only the request's last user message is sent.",
    ),
]

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=CLIENT_MESSAGE_ID_PATTERN,
        description="With X-Session-Id: the send's `client_message_id` (1-64 of A-Za-z0-9_-). A request repeated "
        "with the same key (a retry after a lost answer) starts nothing and answers the turn the first one started.",
    ),
]

COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "A `chat.completion`; with `stream: true`, `chat.completion.chunk` events, then `[DONE]`.",
    },
}


@router.get("/models", response_model=ModelList)
async def list_models(identity: ApiKeyIdentityDep, personas: PersonasDep) -> ModelList:
    """The personas the key's user may use, as models (`id` = persona key): the built-in
    ones, those of ROLES_FILE and the user's own. Needs `Authorization: Bearer <API key>`."""
    return ModelList(data=[_model_object(entry) for entry in await personas.list(identity.user_id)])


@router.get("/models/{model}", response_model=ModelObject)
async def retrieve_model(identity: ApiKeyIdentityDep, personas: PersonasDep, model: str) -> ModelObject:
    """One persona as a model; 404 `model_not_found` for a key the user may not use."""
    try:
        return _model_object(await personas.get(identity.user_id, model))
    except PersonaNotFound:
        raise ModelNotFound(model) from None


@router.post("/chat/completions", response_model=ChatCompletion, responses=COMPLETION_RESPONSES)
async def chat_completions(
    identity: ApiKeyIdentityDep,
    services: ServicesDep,  # the turns, readers and settings: one dependency per request
    body: ChatCompletionRequest,
    session_id: SessionHeader = None,
    idempotency_key: IdempotencyHeader = None,
) -> ChatCompletion | EventSourceResponse:
    """OpenAI's chat completion, answered by a persona. Needs `Authorization: Bearer <API key>`
    (401 otherwise: cookies are not accepted).

    - `model`: a persona key the user may use (GET /v1/models), else 404 `model_not_found`.
      The persona's system prompt replaces the request's `system` and `developer` messages;
      its pinned model answers, else the default model.
    - `X-Session-Id` header: the server's memory. Only the last user message is taken and
      sent as a turn of that session, as POST /chat/stream with `role` = `model` sends it:
      the stored window as history, the session's model if it chose one, the persona kept
      for the session's next turns; 404 for an unknown or foreign session, 409 while another
      answer runs in it, 429 with Retry-After; the turn is stored, even if the client goes.
      Without it, the request's user and assistant messages are the conversation, oldest
      left out first when they do not fit the model (413 when the last cannot), nothing is
      stored, the user's rate and concurrency limits still count it, and a client that goes
      away stops it.
    - `Idempotency-Key` header, with `X-Session-Id`: the turn's `client_message_id`. The
      OpenAI SDKs retry a request whose answer was lost; with a key (`extra_headers`), the
      retry answers the turn the first attempt started instead of storing a second one.
    - Accepted: `temperature` (unless the persona pins one, which wins), `max_tokens` or
      `max_completion_tokens` (capped at the model's max_output_tokens), `stream`,
      `stream_options.include_usage`.
    - Ignored: `n: 1`, `top_p`, `stop`, `presence_penalty`, `frequency_penalty`,
      `logit_bias`, `seed`, `user`, the other `stream_options`, unknown fields.
    - Refused with 400: `tools`, `functions`, `tool_choice`/`function_call` other than
      none or auto, tool and function messages, image, audio and file content parts, `n` > 1,
      a `response_format` other than text (json_object, json_schema), `logprobs`, audio output.

    The answer is a `chat.completion` (`id` = `chatcmpl-<turn id>`, `model` = the persona
    key, `choices[0].message`, `finish_reason` `stop` or `length` (a stopped answer is
    `stop`), `usage` when the provider reports it). A model failure is 502 (504 for a
    timeout), in OpenAI's error shape with the stream's code (`upstream_*`).

    With `stream: true`: Server-Sent Events, each `data:` a `chat.completion.chunk`: first
    `delta.role = "assistant"`, then content deltas, then one with `finish_reason` (and
    `usage` when known), with `stream_options.include_usage` a last chunk with no choices
    and `usage`, then `data: [DONE]`. A model failure after the stream started is one
    `data: {"error": {...}}` (the OpenAI SDK raises APIError), and the stream ends.
    """
    user, turns, readers = identity.user_id, services.turns, services.readers
    try:
        if session_id is not None:
            message = next(m for m in reversed(body.conversation()) if m["role"] == "user")["content"]
            request = TurnRequest(
                user,
                session_id,
                message,
                body.model,
                client_message_id=idempotency_key,
                temperature=body.temperature,
                max_tokens=body.answer_tokens,
            )
            started = await turns.start(request)
        else:
            one_off = OneOffRequest(
                user, body.model, body.conversation(), temperature=body.temperature, max_tokens=body.answer_tokens
            )
            started = await turns.start_one_off(one_off)
    except UnknownRole:
        raise ModelNotFound(body.model) from None
    events = await readers.of(user, started)
    if events is None:  # a reader from a turn's start always has its events
        raise ChatError()
    if body.stream:
        return event_stream(_chunks(events, body.model, body.include_usage), services.settings.sse_ping_seconds)
    return _completion(await collect(events), body.model)


# -- the events, reshaped ---------------------------------------------------------------------

# A turn's error codes that are the client's request, not the model's failure.
REQUEST_ERRORS = {"context_length_exceeded": 400}


class CompletionFailed(ChatError):
    """A turn that ended with an `error` event, as the HTTP error a whole-answer client gets."""

    def __init__(self, result: TurnResult) -> None:
        error = result.error or {}
        self.code = str(error.get("code", "internal_error"))
        self.status_code = REQUEST_ERRORS.get(self.code, result.status_code)
        super().__init__(
            str(error.get("content") or ""), headers={"Retry-After": "2"} if self.status_code == 503 else None
        )


def _completion(result: TurnResult, model: str) -> ChatCompletion:
    if result.end is None:
        raise CompletionFailed(result)
    return ChatCompletion(
        id=_completion_id(result.start),
        created=int(time.time()),
        model=model,
        choices=[Choice(message=AssistantMessage(content=result.content), finish_reason=_finish(result.end))],
        usage=_usage(result.end),
    )


async def _chunks(events: Events, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """A turn's events as `chat.completion.chunk` SSE frames; the chunk events of one batch
    become one content delta."""
    head: dict[str, Any] = {"id": "chatcmpl-", "object": "chat.completion.chunk", "created": int(time.time())}
    head["model"] = model

    def frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return _data(chunk)

    try:
        async for batch in events:
            frames: list[bytes] = []
            text: list[str] = []
            for _, raw in batch:
                payload = orjson.loads(raw)
                kind = payload.get("type")
                if kind == "chunk":
                    text.append(payload.get("content", ""))
                    continue
                if text:
                    frames.append(frame({"content": "".join(text)}))
                    text = []
                if kind == "start":
                    head["id"] = _completion_id(payload)
                    frames.append(frame({"role": "assistant", "content": ""}))
                elif kind == "end":
                    usage = _usage(payload)
                    known = {"usage": usage.model_dump()} if usage is not None and not include_usage else {}
                    frames.append(frame({}, _finish(payload), **known))
                    if include_usage:
                        frames.append(_data({**head, "choices": [], "usage": usage.model_dump() if usage else None}))
                    yield b"".join([*frames, b"data: [DONE]\n\n"])
                    return
                elif kind == "error":
                    failed = CompletionFailed(TurnResult({}, "", None, payload))
                    frames.append(_data(openai_error(failed.status_code, failed.code, failed.message)))
                    yield b"".join(frames)
                    return
            if text:
                frames.append(frame({"content": "".join(text)}))
            if frames:
                yield b"".join(frames)
    finally:
        await close_reader(events)


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _completion_id(start: dict[str, Any]) -> str:
    return "chatcmpl-" + str(start.get("turn_id", ""))


def _finish(end: dict[str, Any]) -> str:
    """OpenAI's finish reason: `length` for an answer cut short, else `stop` (a stopped one too)."""
    return "length" if end.get("finish_reason") == "length" else "stop"


def _usage(end: dict[str, Any]) -> Usage | None:
    usage = end.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _model_object(entry: PersonaEntry) -> ModelObject:
    created = 0
    if entry.created_at:
        created = int(datetime.fromisoformat(entry.created_at.replace("Z", "+00:00")).timestamp())
    persona = entry.persona
    return ModelObject(
        id=persona.key, created=created, owned_by=entry.source, name=persona.name, description=persona.description
    )
