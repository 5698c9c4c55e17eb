"""Session routes: the caller's sessions, and deleting them."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from personachat.web.deps import IdentityDep, MaintenanceDep, StoreDep
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
