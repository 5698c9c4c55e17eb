"""The one middleware around every request: request id and log line, metrics, the identity cookie.

Pure ASGI (not BaseHTTPMiddleware), so streaming responses pass straight through, and one
layer instead of several, so each message a response sends goes through one wrapper.

- The request id comes from `X-Request-ID` (when it is a sane token) or is made here; it is
  returned in the response header and set in `logs.request_id`, so the turn task a request
  starts (which copies the context) logs with the same id.
- When the request was given a new anonymous identity (`identity.NEW_COOKIE` in the scope's
  state), its signed cookie is set on the response.
- One log line when the response is complete: method, route template, status, duration;
  the request and open streams are counted for /metrics.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personachat import metrics
from personachat.identity import NEW_COOKIE
from personachat.logs import request_id
from personachat.web.errors import unhandled
from personachat.web.limits import BodyLimit

logger = logging.getLogger("personachat.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, cookie_name: str, cookie_max_age: int, max_body_bytes: int) -> None:
        self.app = app
        # Hook (personachat.web.limits, .errors): the body limit in front of the app, and the
        # one place an unhandled error is logged and answered.
        self._limited = BodyLimit(app, max_body_bytes)
        self.cookie_name = cookie_name
        self.cookie_max_age = cookie_max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
        token = request_id.set(rid)
        status = 500
        streaming = False

        async def send_wrapped(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                cookie = scope.get("state", {}).get(NEW_COOKIE)
                if cookie is not None:
                    headers.append("set-cookie", self._cookie(scope, cookie))
                streaming = headers.get("content-type", "").startswith("text/event-stream")
                if streaming:
                    metrics.STREAMS_OPEN.inc()
            await send(message)

        try:
            await unhandled(self._limited, scope, receive, send_wrapped)
        finally:
            if streaming:
                metrics.STREAMS_OPEN.dec()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or _unrouted(scope)
            metrics.request_finished(scope["method"], route, status, seconds)
            logger.info(
                "%s %s %s",
                scope["method"],
                route,
                status,
                extra={"method": scope["method"], "route": route, "status": status, "ms": round(seconds * 1000, 1)},
            )
            request_id.reset(token)

    def _cookie(self, scope: Scope, value: str) -> str:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return f"{self.cookie_name}={value}; Max-Age={self.cookie_max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"


def _unrouted(scope: Scope) -> str:
    # Static files, and paths that matched nothing: never the raw path (unbounded label values).
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"
