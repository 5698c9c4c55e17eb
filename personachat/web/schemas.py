"""Request and response bodies of the HTTP API, as they appear in the OpenAPI schema (/docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(None, description="Persona key from /roles; the default persona when omitted.")
    title: str | None = Field(None, max_length=200, description="Shown in the session list; else the first message.")


class StartResponse(BaseModel):
    session_id: str
    role: str
    welcome_message: str = Field(description="For display only: not stored, not sent to the model.")
    created_at: str


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str
    message: str | None = Field(None, description="Required, unless the request resumes a turn (Last-Event-ID).")
    role: str | None = Field(None, description="Persona for this message (and the session from now on).")


class Message(BaseModel):
    """A stored message. Answers also carry `persona` (the persona that gave it), and an
    answer that was stopped before its end carries `"stopped": true`."""

    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str
    timestamp: str
    turn_id: str


class HistoryResponse(BaseModel):
    session_id: str
    role: str
    title: str
    messages: list[Message]
    total: int
    running_turn_id: str | None = Field(
        None, description="The turn being generated now; resume it with last_event_id=<turn id>:0."
    )


class SessionSummary(BaseModel):
    session_id: str
    title: str
    role: str
    created_at: str
    last_activity: str
    messages: int
    running_turn_id: str | None = None


class SessionsResponse(BaseModel):
    sessions: list[SessionSummary]
    total: int


class ClearResponse(BaseModel):
    session_id: str
    cleared: bool = True


class DeleteResponse(BaseModel):
    session_id: str
    deleted: bool = True


class DeleteAllResponse(BaseModel):
    deleted: int = Field(description="How many sessions were deleted, with their messages.")
    skipped_running: list[str] = Field(
        description="Sessions left in place because an answer is being generated in them; stop it and call again."
    )


class StopResponse(BaseModel):
    session_id: str
    turn_id: str | None = Field(description="The turn that was asked to stop; null when none was running.")
    stopped: bool


class RoleInfo(BaseModel):
    key: str
    name: str
    description: str


class RolesResponse(BaseModel):
    roles: list[RoleInfo]
    default_role: str
    demo_model: bool = Field(description="True when the built-in offline demo model answers (no model configured).")


class ErrorResponse(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. session_not_found.")
    detail: str = Field(description="Human-readable message.")
