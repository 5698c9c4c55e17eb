"""The SSE response a stream route returns: the reader's frames, keep-alive pings, and a close
when the client goes away (which never stops the turn: only the reader ends).

A small ASGI response of our own rather than sse-starlette's `EventSourceResponse`: that one
runs four tasks per stream and opens an anyio cancel scope around every send, which the
benchmark (`bench/`) measured as a large share of the CPU per relayed chunk. This one does
what the service needs and no more:

- the frames go out as they come, one `send` each (a reader joins what piled up into one);
- a `: ping` comment after every SSE_PING_SECONDS without a write (proxies keep the stream);
- one task waits for the client's `http.disconnect` and then ends the response at once,
  wherever it waits (for the model's first token, or for a write to drain); the same task
  sends the pings (one task per stream besides the response's own);
- headers: `Cache-Control: no-store`, `X-Accel-Buffering: no` (nginx does not buffer).

What waits for a slow client is bounded: the server (`personachat.web.server`) disconnects a
client that reads nothing for SEND_TIMEOUT_SECONDS while 64 KiB are queued, which ends this
response like any disconnect, and an answer is at most MAX_ANSWER_CHARS long."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from personachat.readers import close_reader

__all__ = ["EventSourceResponse", "event_stream"]

PING = b": ping\r\n\r\n"


class EventSourceResponse(Response):
    """`text/event-stream` of whole SSE frames (`id:` and `data:` lines), as the readers make them."""

    # None on the class: FastAPI then documents a route's error responses as JSON (which they
    # are), while the 200 says text/event-stream in the route's own `responses`.
    media_type = None

    def __init__(self, frames: AsyncIterator[bytes], ping_seconds: float, status_code: int = 200) -> None:
        self.frames = frames
        self.ping_seconds = ping_seconds
        self.status_code = status_code  # (a parameter with a default: FastAPI's OpenAPI reads it)
        self.background = None
        self.media_type = "text/event-stream"
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        streaming = asyncio.current_task()
        assert streaming is not None
        last_write = loop.time()
        gone = False

        async def watch() -> None:
            """Wait for the client's disconnect; ping whenever SSE_PING_SECONDS pass without a
            write. One task for both: the wait for `receive()` is only bounded (a timer) when
            pings are on, and its bound moves with the writes only when it is reached."""
            nonlocal gone, last_write
            while True:
                try:
                    async with asyncio.timeout_at(last_write + self.ping_seconds if self.ping_seconds > 0 else None):
                        while (await receive())["type"] != "http.disconnect":
                            pass
                except TimeoutError:
                    if loop.time() - last_write >= self.ping_seconds:
                        last_write = loop.time()
                        await send({"type": "http.response.body", "body": PING, "more_body": True})
                    continue
                gone = True
                streaming.cancel()
                return

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        watcher = asyncio.create_task(watch())
        try:
            try:
                async for frames in self.frames:
                    last_write = loop.time()
                    await send({"type": "http.response.body", "body": frames, "more_body": True})
            finally:
                watcher.cancel()
                await close_reader(self.frames)
            await asyncio.wait([watcher])  # no ping may follow the last body
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            streaming.uncancel()  # the client went away: this response ends, quietly


def event_stream(frames: AsyncIterator[bytes], ping_seconds: float) -> EventSourceResponse:
    return EventSourceResponse(frames, ping_seconds)
