"""POST /chat/messages: send one message and get the whole answer as one JSON object.

For clients that want no stream (curl, scripts, a fetch() front end). It is another reader
of the same turn as the stream: `turns.start` admits and starts it (or, for a repeated
`client_message_id`, finds the turn that id started), and this route reads its events to
the end (`readers.collect`). The turn is a task of its own: a client that goes away stops
nothing, and the answer is stored as a stream's would be.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from personachat.readers import collect
from personachat.web.deps import IdentityDep, ServicesDep
from personachat.web.errors import error_response
from personachat.web.message_schemas import MessageRequest, MessageResponse, TokenUsage
from personachat.web.params import ERRORS
from personachat.web.schemas import ErrorResponse

router = APIRouter(responses=ERRORS, tags=["chat"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The turn's whole answer, stored in the history (partly, when it was stopped)."},
    413: {
        "model": ErrorResponse,
        "description": (
            "`message_too_long` (longer than MAX_MESSAGE_CHARS), `too_long_for_model` (it cannot fit the "
            "model's context window even alone), or `body_too_large` (the body is over MAX_BODY_BYTES)."
        ),
    },
    502: {
        "model": ErrorResponse,
        "description": (
            "The model failed during the turn: an `upstream_*` code (unreachable, an error, a cut or "
            "malformed stream, rate limited, refused credentials), `model_not_found`, or `turn_lost` "
            "(the server generating it stopped). Nothing was stored; send again."
        ),
    },
    504: {
        "model": ErrorResponse,
        "description": (
            "`upstream_timeout` (the model sent nothing for UPSTREAM_TIMEOUT_SECONDS) or `turn_timeout` "
            "(the answer took longer than TURN_TIMEOUT_SECONDS). Nothing was stored; send again."
        ),
    },
}
# A turn that failed on the store or a shutdown says when to try again, as the refusals do.
RETRY_AFTER = {503: {"Retry-After": "2"}}


@router.post(
    "/chat/messages",
    response_model=MessageResponse,
    response_model_exclude_none=True,
    summary="Send a message and get the whole answer as JSON",
    responses=RESPONSES,
)
async def send_message(
    identity: IdentityDep, services: ServicesDep, body: MessageRequest
) -> MessageResponse | JSONResponse:
    """The same send as POST /chat/stream, answered once the turn has ended:
    `{"session_id", "turn_id", "role", "model", "content", "finish_reason", "usage"?}`.

    - **Errors known before the model runs** are the stream's: unknown role 400, unknown or
      foreign session or `from_turn` 404, a turn already running in the session 409, an empty
      message 422, a message too long 413, rate limit 429, Redis unreachable 503.
    - **A failed turn** answers 502 (the model failed) or 504 (it was too slow), or 503 (the
      store or a shutdown), with `{"code", "detail"}`: the code of the stream's `error` event,
      and its message. Nothing is stored as an answer.
    - **A stopped turn** (POST /chat/stop, from anywhere) answers 200 with `finish_reason`
      `"stopped"` and the part written until then, which is stored with `"stopped": true`.
    - **A client that disconnects** does not stop the turn: it runs to its end and is stored;
      GET /chat/history shows it (`running_turn_id` while it runs).
    - **`client_message_id`** makes the send safe to repeat: the same id in the same session
      starts nothing and answers that turn's result (the same `turn_id`), waiting for it
      while it still runs, as long as the turn's events are kept (TURN_STREAM_TTL_SECONDS).
    """
    # A new turn, live; or the turn a repeated send started, from its start.
    events = await services.readers.of(
        identity.user_id, await services.turns.start(body.turn_request(identity.user_id))
    )
    assert events is not None  # only a resume after a turn's last event reads nothing
    result = await collect(events)
    if result.error is not None:
        status = result.status_code
        return error_response(status, result.error["code"], result.error["content"], RETRY_AFTER.get(status))
    assert result.end is not None  # a result without an error has its `end`
    usage = result.end.get("usage")
    return MessageResponse(
        session_id=body.session_id,
        turn_id=result.end["turn_id"],
        role=result.start["role"],
        model=result.start["model"],
        content=result.content,
        finish_reason=result.end["finish_reason"],
        usage=TokenUsage(**usage) if usage is not None else None,
    )
