"""History as Markdown, for people: one session (`GET /chat/history?format=markdown`) or
a whole export document (`chatctl export --format markdown`).

Markdown is a reading format and is not imported back; the JSON export is the one that
round-trips. Message text is written as it was sent: it is the user's own conversation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from personachat.store.history import SessionInfo

_SPEAKERS = {"user": "User", "assistant": "Assistant"}


def session_markdown(session: SessionInfo, messages: Iterable[dict[str, Any]], user: str | None = None) -> str:
    """One session as a Markdown document: a heading, its details, then each message."""
    lines = [f"# {_one_line(session.title) or 'Untitled session'}", ""]
    if user is not None:
        lines.append(f"- User: `{user}`")
    lines += [
        f"- Session: `{session.session_id}`",
        f"- Persona: {session.role}",
        f"- Created: {session.created_at}",
        f"- Last activity: {session.last_activity}",
        "",
    ]
    for message in messages:
        speaker = _SPEAKERS.get(str(message.get("role")), str(message.get("role")))
        if message.get("persona"):
            speaker += f" ({message['persona']})"
        heading = f"## {speaker} · {message.get('timestamp', '')}"
        if message.get("stopped"):
            heading += " · stopped"
        lines += [heading, "", str(message.get("content", "")), ""]
    return "\n".join(lines)


def document_markdown(document: dict[str, Any]) -> str:
    """Every session of an export document (see `maintenance.Maintenance.export`)."""
    parts = []
    for item in document["sessions"]:
        meta = item["meta"]
        info = SessionInfo(
            session_id=item["session_id"],
            role=meta.get("role", ""),
            title=meta.get("title", ""),
            created_at=meta.get("created_at", ""),
            last_activity=meta.get("last_activity", ""),
            messages=len(item["messages"]),
        )
        parts.append(session_markdown(info, item["messages"], user=item["user"]))
    return "\n---\n\n".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())
