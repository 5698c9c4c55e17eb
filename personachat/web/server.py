"""The HTTP server's options: uvicorn with httptools, plus the bounds uvicorn lacks.

Both `start_server.py` and the tests' servers run uvicorn with `server_options(settings)`,
so what is tested is what runs. uvicorn's httptools protocol bounds neither a request's
head nor the time a client may take to send it, and keeps a connection whose client reads
nothing for as long as the app writes to it. (h11 has `h11_max_incomplete_event_size`, but
is the slower parser and has no time limits either.) `HttpProtocol` is uvicorn's
`HttpToolsProtocol` with these bounds added:

- **Head size.** The request line and headers are fed to the parser only up to the URL limit
  plus MAX_HEADER_BYTES: the bytes are counted before parsing, because httptools joins the
  pieces of a header by concatenation (a 100 MB header cost 10 s of CPU and stalled every
  other request). Headers over MAX_HEADER_BYTES are refused with 431 `headers_too_large`;
  a URL over `MAX_URL_BYTES` (the parser's own limit, 64 KiB, once a plain-text 400) with
  414 `url_too_long`, whose detail says to send long messages with POST /chat/stream.
- **Time to send a request.** Its head must arrive within REQUEST_TIMEOUT_SECONDS of its
  first byte (or of the connection's opening), and its body within as long again after the
  head: else 408 `request_timeout`, or a plain close for a connection that sent nothing.
  Between requests, uvicorn's keep-alive timeout (KEEP_ALIVE_SECONDS) applies.
- **A client that does not read.** When the socket's write buffer stays above the
  transport's high-water mark (64 KiB) for SEND_TIMEOUT_SECONDS, the connection is
  closed: the app's `send()` returns and it sees a disconnect, so an SSE reader ends and
  what it had queued is freed (its turn goes on and is stored).
- Errors the server answers itself are JSON `{"code", "detail"}`, like the app's, with
  `Connection: close`.

A WebSocket (`GET /chat/ws`) leaves this protocol at its upgrade for `WebSocketProtocol`,
uvicorn's websockets (sans-I/O) protocol with the same send bound: a client that reads
nothing for SEND_TIMEOUT_SECONDS while 64 KiB are queued is cut off, and the app's pending
send sees the disconnect. uvicorn already bounds the rest: a message is at most
MAX_BODY_BYTES (a larger one closes the socket with 1009), one received message waits for
the app at a time (reading pauses until it is taken), and a keep-alive ping every
SSE_PING_SECONDS closes a peer that has not answered within SEND_TIMEOUT_SECONDS.
Compression (permessage-deflate) is off: chat frames are small, and each socket's zlib
state would cost far more memory than it saves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from config import Settings

logger = logging.getLogger("personachat.server")

MAX_URL_BYTES = 65_535  # httptools cannot parse a longer URL
REQUEST_LINE_SLACK = 1_024  # the method, the HTTP version and line ends, on top of URL and headers


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    request_timeout: float
    send_timeout: float
    max_url_bytes: int = MAX_URL_BYTES

    @property
    def head_bytes(self) -> int:
        return self.max_url_bytes + self.max_header_bytes + REQUEST_LINE_SLACK


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` (picklable, for `--workers`)."""
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        request_timeout=settings.request_timeout_seconds,
        send_timeout=settings.send_timeout_seconds,
    )
    return {
        "http": functools.partial(HttpProtocol, limits=limits),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "ws": functools.partial(WebSocketProtocol, send_timeout=settings.send_timeout_seconds),
        "ws_max_size": settings.resolved_max_body_bytes,
        "ws_ping_interval": settings.sse_ping_seconds,
        "ws_ping_timeout": settings.send_timeout_seconds,
        "ws_per_message_deflate": False,
    }


class SendTimeout:
    """Cuts off a client that reads nothing: when the transport's write buffer stays above its
    high-water mark for `send_timeout` seconds, the connection is aborted (what is buffered is
    dropped, and connection_lost wakes the app's pending send)."""

    send_timeout: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _send_timer: TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        logger.info("cutting off a client that read nothing for %g seconds", self.send_timeout)
        self.transport.abort()


class HttpProtocol(SendTimeout, HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.send_timeout = limits.send_timeout
        self._in_head = True  # between requests, or reading one's request line and headers
        self._head_bytes = 0  # bytes fed to the parser since the head began
        self._url_bytes = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._read_timer: TimerHandle | None = None
        self._upgraded = False

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and self.parser is not None and not self._upgraded and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(data)
                return
            if self._read_timer is None:
                self._start_read_timer()  # the first byte of a request on a kept-alive connection
            room = self.limits.head_bytes - self._head_bytes
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._refusal is None and self._in_head and self._head_bytes >= self.limits.head_bytes:
                self._refusal = self._url_refusal() if self._header_bytes == 0 else self._header_refusal()
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return

    # -- parser callbacks: count the head, and parse nothing more once it is refused ------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        if self._refusal is not None:
            return
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_url_bytes:
            self._refusal = self._url_refusal()
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = self._header_refusal()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_head = False
        self._start_read_timer()  # now for the body; on_message_complete stops it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        self._stop_read_timer()
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection becomes the WebSocket protocol's, with its own timeouts: stop ours.
        self._stop_timers()
        self._upgraded = True
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._write_error(400, "invalid_request", "The HTTP request could not be parsed.")

    # -- time limits ----------------------------------------------------------------------

    def _start_read_timer(self) -> None:
        self._stop_read_timer()
        self._read_timer = self.loop.call_later(self.limits.request_timeout, self._read_timed_out)

    def _stop_timers(self) -> None:
        self._stop_read_timer()
        self._stop_send_timer()

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head:
            # Nothing sent yet (an idle connection), or a pipelined request behind a response
            # still being written: close. Else the head is too slow: 408.
            if self._head_bytes == 0 or (cycle is not None and not cycle.response_complete):
                self.transport.close()
                return
        elif cycle is not None:
            if cycle.response_started:  # answered already (e.g. 404 before reading the body)
                self.transport.close()
                return
            # The app waits for the rest of the body: it gets a disconnect, and what it sends
            # from now on is dropped (the 408 below is the answer).
            cycle.disconnected = True
            cycle.message_event.set()
        what = "headers" if self._in_head else "body"
        self._write_error(408, "request_timeout", f"The request's {what} took longer than {self._seconds} to arrive.")

    @property
    def _seconds(self) -> str:
        return f"{self.limits.request_timeout:g} seconds"

    # -- refusals -------------------------------------------------------------------------

    def _url_refusal(self) -> tuple[int, str, str]:
        detail = (
            f"The URL is longer than {self.limits.max_url_bytes} bytes. "
            "Send long messages with POST /chat/stream and a JSON body."
        )
        return 414, "url_too_long", detail

    def _header_refusal(self) -> tuple[int, str, str]:
        return 431, "headers_too_large", f"The request headers are larger than {self.limits.max_header_bytes} bytes."

    def _refuse(self, status: int, code: str, detail: str) -> None:
        logger.info("refused a request: %s", code)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request while a response is being written
            return
        self._write_error(status, code, detail)

    def _write_error(self, status: int, code: str, detail: str) -> None:
        body = orjson.dumps({"code": code, "detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        content += [b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(content))
        self.transport.close()


class WebSocketProtocol(SendTimeout, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, cutting off a client that reads nothing (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        send_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.send_timeout = send_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_send_timer()
        super().connection_lost(exc)
