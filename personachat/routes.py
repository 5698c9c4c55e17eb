"""The HTTP routes. Each validates its input, calls one service, and shapes the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse

from personachat.deps import (
    IdentityDep,
    MaintenanceDep,
    PersonasDep,
    ReadersDep,
    ServicesDep,
    SettingsDep,
    StoreDep,
    TurnsDep,
)
from personachat.errors import InvalidRequest, StoreUnavailable
from personachat.export import session_markdown
from personachat.readers import TurnReaders, follow
from personachat.redisconn import UNREACHABLE
from personachat.schemas import (
    ClearResponse,
    DeleteAllResponse,
    DeleteResponse,
    ErrorResponse,
    HistoryResponse,
    RoleInfo,
    RolesResponse,
    SessionsResponse,
    SessionSummary,
    StartRequest,
    StartResponse,
    StopResponse,
    StreamRequest,
)
from personachat.turns import TurnRequest, TurnService

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}

router = APIRouter(responses=ERRORS)

SessionIdQuery = Annotated[str, Query(description="The session id from POST /chat/start.")]
LastEventIdHeader = Annotated[
    str | None, Header(alias="Last-Event-ID", description="Resume a turn after this event (EventSource sends it).")
]
LastEventIdQuery = Annotated[
    str | None, Query(description="Same as the Last-Event-ID header, for clients that cannot set headers.")
]


@router.post("/chat/start", response_model=StartResponse, tags=["chat"])
async def start_chat(
    identity: IdentityDep, store: StoreDep, personas: PersonasDep, body: Annotated[StartRequest | None, Body()] = None
) -> StartResponse:
    """Start a session with a persona (the default one when no body is sent)."""
    persona = personas.get(body.role if body else None)
    session = await store.create_session(identity.user_id, persona.key, body.title if body else None)
    return StartResponse(
        session_id=session.session_id,
        role=persona.key,
        welcome_message=persona.welcome_message,
        created_at=session.created_at,
    )


@router.get("/chat/stream", response_class=EventSourceResponse, tags=["chat"])
async def stream_get(
    identity: IdentityDep,
    turns: TurnsDep,
    readers: ReadersDep,
    settings: SettingsDep,
    session_id: SessionIdQuery,
    message: Annotated[str | None, Query(description="The user's message.")] = None,
    role: Annotated[str | None, Query(description="Persona for this message.")] = None,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """Send one message and stream the answer as Server-Sent Events (for EventSource).

    Events are JSON objects with a `type`: `start`, `chunk` (`content`), then `end` or `error`.
    With `Last-Event-ID`, the request resumes that turn instead of sending a message:
    the events after that id are replayed and the live ones follow.
    """
    resume = last_event_id_header or last_event_id
    request = TurnRequest(identity.user_id, session_id, message or "", role)
    return await _stream(turns, readers, settings.sse_ping_seconds, request, resume, message is None)


@router.post("/chat/stream", response_class=EventSourceResponse, tags=["chat"])
async def stream_post(
    identity: IdentityDep,
    turns: TurnsDep,
    readers: ReadersDep,
    settings: SettingsDep,
    body: StreamRequest,
    last_event_id_header: LastEventIdHeader = None,
) -> Response:
    """The same as GET /chat/stream with a JSON body, for long messages and fetch() clients."""
    request = TurnRequest(identity.user_id, body.session_id, body.message or "", body.role)
    return await _stream(turns, readers, settings.sse_ping_seconds, request, last_event_id_header, body.message is None)


async def _stream(
    turns: TurnService, readers: TurnReaders, ping: float, request: TurnRequest, resume: str | None, no_message: bool
) -> Response:
    reader: AsyncIterator[bytes] | None
    if resume:
        reader = await readers.open(request.user, request.session_id, resume)
        if reader is None:  # the turn ended before this id: tell EventSource not to reconnect
            return Response(status_code=204)
    else:
        if no_message:
            raise InvalidRequest("'message' is required.")
        reader = follow(await turns.start(request))
    return EventSourceResponse(reader, ping=ping, shutdown_event=None, shutdown_grace_period=5)


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
    )


@router.delete("/chat/history/{session_id}", response_model=ClearResponse, tags=["chat"])
async def clear_history(identity: IdentityDep, store: StoreDep, session_id: str) -> ClearResponse:
    """Delete the session's messages; the session stays (409 while an answer is generated)."""
    await store.clear(identity.user_id, session_id)
    return ClearResponse(session_id=session_id)


@router.get("/chat/sessions", response_model=SessionsResponse, tags=["sessions"])
async def list_sessions(identity: IdentityDep, store: StoreDep) -> SessionsResponse:
    """The caller's sessions, newest activity first."""
    sessions = [SessionSummary(**asdict(session)) for session in await store.list_sessions(identity.user_id)]
    return SessionsResponse(sessions=sessions, total=len(sessions))


@router.delete("/chat/sessions", response_model=DeleteAllResponse, tags=["sessions"])
async def delete_all_sessions(identity: IdentityDep, maintenance: MaintenanceDep) -> DeleteAllResponse:
    """Delete all of the caller's sessions and their messages.

    A session in which an answer is being generated is not deleted: it is skipped and listed
    in `skipped_running`, and the request still succeeds (200). Stop it (`POST /chat/stop`),
    or wait for the answer, and call again to delete it too.
    """
    tally = await maintenance.delete_sessions(identity.user_id)
    return DeleteAllResponse(deleted=tally.deleted, skipped_running=[ref.session_id for ref in tally.skipped_running])


@router.delete("/chat/sessions/{session_id}", response_model=DeleteResponse, tags=["sessions"])
async def delete_session(identity: IdentityDep, store: StoreDep, session_id: str) -> DeleteResponse:
    """Delete the session and its messages (409 while an answer is generated)."""
    await store.delete(identity.user_id, session_id)
    return DeleteResponse(session_id=session_id)


@router.post("/chat/stop", response_model=StopResponse, tags=["chat"])
async def stop(identity: IdentityDep, turns: TurnsDep, session_id: SessionIdQuery) -> StopResponse:
    """Stop the answer being generated; readers get `end` with finish_reason "stopped"."""
    session = await turns.stop(identity.user_id, session_id)
    return StopResponse(
        session_id=session_id, turn_id=session.running_turn_id, stopped=session.running_turn_id is not None
    )


@router.get("/roles", response_model=RolesResponse, tags=["personas"])
async def roles(personas: PersonasDep, settings: SettingsDep) -> RolesResponse:
    """The personas, and whether the offline demo model is the one answering."""
    return RolesResponse(
        roles=[RoleInfo(key=p.key, name=p.name, description=p.description) for p in personas],
        default_role=personas.default_key,
        demo_model=settings.uses_demo_model,
    )


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(services: ServicesDep) -> dict[str, str]:
    """Redis is reachable (503 otherwise)."""
    try:
        await services.redis.ping()
    except UNREACHABLE as exc:
        raise StoreUnavailable() from exc
    return {"status": "ready"}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})
