"""The SSE response a stream route returns: the reader's frames, keep-alive pings, and a close
when the client goes away (which never stops the turn: only the reader ends).

What waits for a slow client is bounded: the server (`personachat.web.server`) disconnects a
client that reads nothing for SEND_TIMEOUT_SECONDS while 64 KiB are queued, which ends this
response like any disconnect, and an answer is at most MAX_ANSWER_CHARS long."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

__all__ = ["EventSourceResponse", "event_stream"]


def event_stream(frames: AsyncIterator[bytes], ping_seconds: float) -> EventSourceResponse:
    """`frames` are whole SSE frames (`id:` and `data:` lines), as the readers make them."""
    return EventSourceResponse(frames, ping=ping_seconds, shutdown_event=None, shutdown_grace_period=5)
