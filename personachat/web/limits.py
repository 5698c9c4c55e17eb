"""The request body limit: refused before it is held, not after it was read whole.

The framework reads a body whole before anything can look at its size, so a 50 MB body
cost 150 MB of memory before its 413. Here, in front of the app (called from the one
middleware), a body is refused:

- up front, when its `Content-Length` says it is over the limit: nothing of it is read;
- while it is read (a chunked body, or a `Content-Length` that lies), as soon as what was
  received passes the limit: nothing more is read or kept.

The refusal is `413 {"code": "body_too_large"}` with `Connection: close`, so the server
stops reading the rest of the body from the socket instead of parsing it to discard it. The
app then sees the client as gone (`http.disconnect`), and whatever it sends is dropped: the
413 was the answer.

The limit (MAX_BODY_BYTES) is sized by default for the longest message (MAX_MESSAGE_CHARS
characters, each in its longest JSON form: an escaped surrogate pair, `\\ud83d\\ude00`, 12
bytes) plus 4 KiB for the other fields (`Settings.resolved_max_body_bytes`); no request of
this API needs more.

The other bounds of a request (its headers, its URL, how long its head and body may take to
arrive, and how long a client may leave a response unread) are the HTTP server's, in
`personachat.web.server`.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personachat.web.errors import error_response


class BodyLimit:
    """An ASGI wrapper that refuses request bodies over `max_bytes` before holding them.

    Paths in `own_bounds` read their bodies with a bound of their own (a character card's
    import, up to 4 MB, answers 422 beyond it as API.md says) and pass untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, own_bounds: Iterable[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_bounds = frozenset(own_bounds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.own_bounds:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def receive_limited() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive_limited, send_unless_refused)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_bytes} bytes."
        response = error_response(413, "body_too_large", detail, {"Connection": "close"}, scope=scope)
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses those; counting the body still applies
    return None
