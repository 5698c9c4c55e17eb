"""Bodies of the routes that rewrite and find conversations: PATCH a session, search."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# What a client_message_id may be (the store validates it too).
CLIENT_MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
CLIENT_MESSAGE_ID_DESCRIPTION = (
    "1-64 characters of A-Za-z0-9_-. A repeated send with the same id in the same session starts "
    "nothing: it replays the turn that id started, from its start (while its events are kept, "
    "TURN_STREAM_TTL_SECONDS)."
)
FROM_TURN_DESCRIPTION = (
    "A turn of this session: the prompt is built from the messages before it, and when the new "
    "turn is stored it replaces that turn and every later one (regenerate, edit and resend)."
)


class SessionPatch(BaseModel):
    """Any of the fields; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"\S", description="Never replaced by an automatic title."
    )
    role: str | None = Field(None, description="A persona key the caller may use (GET /roles).")
    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^\S+$",
        description="The model for this session's next turns (stored as given).",
    )


class SearchResult(BaseModel):
    session_id: str
    title: str
    role: str
    last_activity: str
    snippet: str = Field(description="The text around the match (of the message, else of the title).")
    turn_id: str | None = Field(description="The turn of the matching message; null when only the title matched.")


class SearchResponse(BaseModel):
    results: list[SearchResult]
    total: int = Field(description="How many sessions match (results holds at most `limit`).")
