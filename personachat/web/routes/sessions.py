"""Session routes: the caller's sessions, renaming and searching them, and deleting them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from personachat.web.craft_schemas import SearchResponse, SearchResult, SessionPatch
from personachat.web.deps import IdentityDep, MaintenanceDep, PersonasDep, SearchDep, StoreDep
from personachat.web.params import ERRORS
from personachat.web.schemas import DeleteAllResponse, DeleteResponse, SessionsResponse, SessionSummary

router = APIRouter(responses=ERRORS, tags=["sessions"])


@router.get("/chat/sessions", response_model=SessionsResponse)
async def list_sessions(identity: IdentityDep, store: StoreDep) -> SessionsResponse:
    """The caller's sessions, newest activity first."""
    sessions = [SessionSummary(**asdict(session)) for session in await store.list_sessions(identity.user_id)]
    return SessionsResponse(sessions=sessions, total=len(sessions))


@router.delete("/chat/sessions", response_model=DeleteAllResponse)
async def delete_all_sessions(identity: IdentityDep, maintenance: MaintenanceDep) -> DeleteAllResponse:
    """Delete all of the caller's sessions and their messages.

    A session in which an answer is being generated is not deleted: it is skipped and listed
    in `skipped_running`, and the request still succeeds (200). Stop it (`POST /chat/stop`),
    or wait for the answer, and call again to delete it too.
    """
    tally = await maintenance.delete_sessions(identity.user_id)
    return DeleteAllResponse(deleted=tally.deleted, skipped_running=[ref.session_id for ref in tally.skipped_running])


@router.delete("/chat/sessions/{session_id}", response_model=DeleteResponse)
async def delete_session(identity: IdentityDep, store: StoreDep, session_id: str) -> DeleteResponse:
    """Delete the session and its messages (409 while an answer is generated)."""
    await store.delete_session(identity.user_id, session_id)
    return DeleteResponse(session_id=session_id)


@router.patch("/chat/sessions/{session_id}", response_model=SessionSummary)
async def update_session(
    identity: IdentityDep, store: StoreDep, personas: PersonasDep, session_id: str, body: SessionPatch
) -> SessionSummary:
    """Change the session's `title` (an automatic title never replaces it), `role` (a persona
    the caller may use: 400 otherwise) or `model`; answers the session's summary.

    `model` is stored as given and used by the session's next turns. Fields left out (or
    null) stay as they are: an empty body changes nothing and answers the summary."""
    role = (await personas.resolve(identity.user_id, body.role)).key if body.role is not None else None
    title = body.title.strip() if body.title is not None else None
    session = await store.update_session(identity.user_id, session_id, title=title, role=role, model=body.model)
    return SessionSummary(**asdict(session))


@router.get("/chat/search", response_model=SearchResponse)
async def search(
    identity: IdentityDep,
    sessions: SearchDep,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Text to find, case-insensitively.")],
    limit: Annotated[int, Query(ge=1, le=100, description="At most this many results.")] = 20,
) -> SearchResponse:
    """The caller's sessions whose title or messages contain `q`, newest activity first, each
    once: with a snippet of its most recent matching message and that message's `turn_id`
    (else of its title, with `turn_id` null)."""
    hits, total = await sessions.search(identity.user_id, q, limit)
    return SearchResponse(results=[SearchResult(**asdict(hit)) for hit in hits], total=total)
