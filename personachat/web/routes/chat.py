"""Chat routes: start a session, send and stream, read and clear history, stop an answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response

from personachat.admin.export import session_markdown
from personachat.errors import InvalidRequest
from personachat.readers import Events, sse_frames
from personachat.turns import TurnRequest
from personachat.web.craft_schemas import (
    CLIENT_MESSAGE_ID_DESCRIPTION,
    CLIENT_MESSAGE_ID_PATTERN,
    FROM_TURN_DESCRIPTION,
)
from personachat.web.deps import IdentityDep, ModelsDep, PersonasDep, Services, ServicesDep, StoreDep, TurnsDep
from personachat.web.params import ERRORS, LastEventIdHeader, LastEventIdQuery, SessionIdQuery
from personachat.web.schemas import (
    ClearResponse,
    ErrorResponse,
    HistoryResponse,
    StartRequest,
    StartResponse,
    StopResponse,
    StreamRequest,
)
from personachat.web.sse import EventSourceResponse, event_stream

router = APIRouter(responses=ERRORS)


@router.post("/chat/start", response_model=StartResponse)
async def start_chat(
    identity: IdentityDep,
    store: StoreDep,
    personas: PersonasDep,
    models: ModelsDep,
    body: Annotated[StartRequest | None, Body()] = None,
) -> StartResponse:
    """Start a session with a persona (the default one when no body is sent), and optionally
    a model of its own (an id from GET /models; 400 `unknown_model` otherwise)."""
    persona = await personas.resolve(identity.user_id, body.role if body else None)
    model = models.registry.get(body.model).id if body and body.model is not None else None
    session = await store.create_session(identity.user_id, persona.key, body.title if body else None, model)
    return StartResponse(
        session_id=session.session_id,
        role=persona.key,
        welcome_message=persona.welcome_message,
        created_at=session.created_at,
        model=model,
    )


STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "The turn's events."},
    204: {"description": "Resumed after the turn's last event: nothing more will come (EventSource stops)."},
}


@router.get(
    "/chat/stream",
    response_class=EventSourceResponse,
    responses={**STREAM_RESPONSES, 414: {"model": ErrorResponse, "description": "URL too long: use POST."}},
)
async def stream_get(
    identity: IdentityDep,
    services: ServicesDep,  # one dependency for the turns, readers and settings: one per send
    session_id: SessionIdQuery,
    message: Annotated[str | None, Query(description="The user's message; left out when resuming.")] = None,
    role: Annotated[str | None, Query(description="Persona for this message.")] = None,
    model: Annotated[str | None, Query(max_length=100, description="Model for this message (GET /models).")] = None,
    from_turn: Annotated[str | None, Query(description=FROM_TURN_DESCRIPTION)] = None,
    client_message_id: Annotated[
        str | None, Query(pattern=CLIENT_MESSAGE_ID_PATTERN, description=CLIENT_MESSAGE_ID_DESCRIPTION)
    ] = None,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """Send one message and stream the answer as Server-Sent Events (for EventSource).

    Events are JSON objects with a `type`: `start`, `chunk` (`content`), then `end` or `error`.
    With `Last-Event-ID`, the request resumes that turn instead of sending a message (which
    may then be left out): the events after that id are replayed and the live ones follow.

    The URL may be at most 65,535 bytes once percent-encoded (about 7,000 CJK characters, or
    21,000 ASCII ones at worst): a longer one is refused with 414 `url_too_long`. Send long
    messages with POST /chat/stream.
    """
    resume = last_event_id_header or last_event_id
    request = TurnRequest(
        identity.user_id,
        session_id,
        message or "",
        role,
        model=model,
        from_turn=from_turn,
        client_message_id=client_message_id,
    )
    return await _stream(services, request, resume, message is None)


@router.post("/chat/stream", response_class=EventSourceResponse, responses=STREAM_RESPONSES)
async def stream_post(
    identity: IdentityDep,
    services: ServicesDep,
    body: StreamRequest,
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """The same as GET /chat/stream with a JSON body, for long messages and fetch() clients.

    `message` is required, unless the request resumes a turn with `Last-Event-ID`.
    """
    request = body.turn_request(identity.user_id)
    return await _stream(services, request, last_event_id_header, body.message is None)


async def _stream(services: Services, request: TurnRequest, resume: str | None, no_message: bool) -> Response:
    turns, readers = services.turns, services.readers
    events: Events | None
    if resume:
        events = await readers.open(request.user, request.session_id, resume)
    elif no_message:
        raise InvalidRequest("'message' is required.")
    else:  # a new turn, live; or a repeated send's turn, from its start
        events = await readers.of(request.user, await turns.start(request))
    if events is None:  # the turn ended before this id: tell EventSource not to reconnect
        return Response(status_code=204)
    return event_stream(sse_frames(events), services.settings.sse_ping_seconds)


MARKDOWN = "text/markdown; charset=utf-8"


@router.get(
    "/chat/history",
    response_model=HistoryResponse,
    tags=["chat"],
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
)
async def history(
    identity: IdentityDep,
    store: StoreDep,
    session_id: SessionIdQuery,
    format_: Annotated[
        Literal["json", "markdown"],
        Query(alias="format", description="`markdown`: the session as a readable Markdown document."),
    ] = "json",
) -> HistoryResponse | Response:
    """The session's messages, oldest first.

    With `format=markdown` the answer is a Markdown export of the session (`text/markdown`):
    its title, persona and times, then each message under a heading naming its speaker.
    """
    session, messages = await store.messages(identity.user_id, session_id)
    if format_ == "markdown":
        return Response(session_markdown(session, messages), media_type=MARKDOWN)
    return HistoryResponse(
        session_id=session.session_id,
        role=session.role,
        title=session.title,
        messages=messages,  # type: ignore[arg-type]
        total=len(messages),
        running_turn_id=session.running_turn_id,
        model=session.model,
    )


@router.delete("/chat/history/{session_id}", response_model=ClearResponse)
async def clear_history(identity: IdentityDep, store: StoreDep, session_id: str) -> ClearResponse:
    """Delete the session's messages; the session stays (409 while an answer is generated)."""
    await store.clear_session(identity.user_id, session_id)
    return ClearResponse(session_id=session_id)


@router.post("/chat/stop", response_model=StopResponse)
async def stop(identity: IdentityDep, turns: TurnsDep, session_id: SessionIdQuery) -> StopResponse:
    """Stop the answer being generated; readers get `end` with finish_reason "stopped"."""
    turn_id, stopped = await turns.stop(identity.user_id, session_id)
    return StopResponse(session_id=session_id, turn_id=turn_id, stopped=stopped)
