"""The one middleware around every request: host and cross-site checks, request id and log
line, metrics, security headers, the identity cookie.

Pure ASGI (not BaseHTTPMiddleware), so streaming responses pass straight through, and one
layer instead of several, so each message a response sends goes through one wrapper.

- Before the app runs, a request is refused (JSON `{"code", "detail"}`, the app never sees
  it, so no identity is minted) when its `Host` is not one of ALLOWED_HOSTS (400
  `invalid_host`: a DNS-rebinding page names its own host), or when it changes state and
  comes from another site's page (403 `cross_site`, the rule of API.md "Sending safely",
  in `CrossSitePolicy`). A WebSocket upgrade is checked the same way.
- The request id comes from `X-Request-ID` (when it is a sane token) or is made here; it is
  returned in the response header and set in `logs.request_id`, so the turn task a request
  starts (which copies the context) logs with the same id.
- When the request was given a new anonymous identity (`identity.NEW_COOKIE` in the scope's
  state), its signed cookie is set on the response, unless the request came from another
  site: a valid cookie the browser left out of a cross-site request must not be replaced.
- Every response gets `X-Content-Type-Options: nosniff` and `Referrer-Policy`; an HTML
  response that names no Content-Security-Policy of its own gets `html_csp`.
- One log line when the response is complete: method, route template, status, duration;
  the request and open streams are counted for /metrics.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personachat import metrics
from personachat.identity import NEW_COOKIE
from personachat.logs import request_id
from personachat.web.errors import app_path, error_body, unhandled
from personachat.web.limits import BodyLimit

logger = logging.getLogger("personachat.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class CrossSitePolicy:
    """Which requests count as coming from another site's page (API.md, "Sending safely").

    A browser attaches the cookie on its own, so only what the browser itself reports tells
    a visitor's own page from another site's: `Sec-Fetch-Site` (every current browser), else
    `Origin`. "same-site" is refused too: a page on another port of the same host is
    another application. An origin in CORS_ORIGINS is a front end of this service and
    passes whatever `Sec-Fetch-Site` says (its requests are `cross-site` by nature).
    """

    cors_origins: frozenset[str] = frozenset()

    def is_foreign(self, headers: Headers) -> bool:
        """True when the request was made by another site's page."""
        origin = headers.get("origin")
        if origin is not None and origin.lower() in self.cors_origins:
            return False
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None:
            return fetch_site.lower() not in ("same-origin", "none")
        if origin is not None:
            # Its own origin: the host part must be the Host the request was sent to. (The
            # scheme is not compared: behind a TLS proxy the app may see http.)
            _, _, netloc = origin.lower().partition("://")
            return netloc != headers.get("host", "").lower()
        return False  # curl, scripts: neither header, and no cookie a browser sent on its own

    def may_set_cookie(self, headers: Headers) -> bool:
        """False for a request from another site: it may lack a valid cookie only because the
        browser left it out (SameSite), and a cookie minted for it would replace the visitor's
        own. A listed front end on another *site* is the same case (it never sends a Lax cookie)."""
        return not self.is_foreign(headers) and headers.get("sec-fetch-site", "").lower() != "cross-site"

    def refuses(self, scope: Scope, headers: Headers) -> bool:
        """True for a state-changing request, on the cookie alone, from another site's page."""
        if not _changes_state(scope):
            return False
        scheme, _, _ = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return False  # no ambient credential: a page cannot make the browser add one
        return self.is_foreign(headers)


def _changes_state(scope: Scope) -> bool:
    if scope["type"] == "websocket":
        return True
    method = scope["method"]
    if method in _STATE_CHANGING:
        return True
    if method in ("GET", "HEAD") and app_path(scope) == "/chat/stream":
        # EventSource can only GET: a message in the query sends it.
        query = scope.get("query_string", b"").decode("latin-1")
        return any(name == "message" for name, _ in parse_qsl(query, keep_blank_values=True))
    return False


class HostPolicy:
    """ALLOWED_HOSTS: exact names, `*.example.com` for subdomains, or `*` for any."""

    def __init__(self, allowed: Iterable[str]) -> None:
        names = {name.strip().lower().strip("[]") for name in allowed if name.strip()}
        self.any = "*" in names
        self.exact = frozenset(name for name in names if not name.startswith("*"))
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))

    def allows(self, host_header: str) -> bool:
        if self.any:
            return True
        host = host_header.lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return host in self.exact or (bool(host) and host.endswith(self.suffixes))


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        cookie_name: str,
        cookie_max_age: int,
        allowed_hosts: Iterable[str] = ("*",),
        cors_origins: Iterable[str] = (),
        html_csp: str | None = None,
        max_body_bytes: int,
        own_body_bounds: Iterable[str] = (),
    ) -> None:
        self.app = app
        # Hook (personachat.web.limits, .errors): the body limit in front of the app, and the
        # one place an unhandled error is logged and answered.
        self._limited = BodyLimit(app, max_body_bytes, own_body_bounds)
        self.cookie_name = cookie_name
        self.cookie_max_age = cookie_max_age
        self.hosts = HostPolicy(allowed_hosts)
        self.cross_site = CrossSitePolicy(frozenset(origin.lower() for origin in cors_origins))
        self.html_csp = html_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_headers = Headers(scope=scope)
        refusal = self._refusal(scope, request_headers)
        no_new_cookie = not self.cross_site.may_set_cookie(request_headers)
        rid = _request_id(scope)
        token = request_id.set(rid)
        status = 500
        streaming = False

        async def send_wrapped(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                self._security_headers(headers)
                cookie = scope.get("state", {}).get(NEW_COOKIE)
                if cookie is not None and not no_new_cookie:
                    headers.append("set-cookie", self._cookie(scope, cookie))
                streaming = headers.get("content-type", "").startswith("text/event-stream")
                if streaming:
                    metrics.STREAMS_OPEN.inc()
            await send(message)

        try:
            if refusal is None:
                await unhandled(self._limited, scope, receive, send_wrapped)
            else:
                await _json_error(send_wrapped, scope, *refusal)
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

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        """(status, code, detail) of a request refused before the app runs, else None."""
        if not self.hosts.allows(headers.get("host", "")):
            return 400, "invalid_host", "This server does not answer for that Host; see ALLOWED_HOSTS."
        if self.cross_site.refuses(scope, headers):
            return (
                403,
                "cross_site",
                "A request from another site's page cannot act with this site's cookie; "
                "send it from the chat's own page, list its origin in CORS_ORIGINS, or use an API key.",
            )
        return None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket upgrade: refused as an HTTP request would be (JSON, when the server can
        answer a handshake with a body), else the app runs with a request id, a new identity's
        cookie on the handshake's answer, and one log line when the socket closes."""
        started = time.perf_counter()
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        outcome = {"status": 403}
        token = request_id.set(_request_id(scope))
        try:
            if refusal is None:
                await self.app(scope, receive, self._socket_send(scope, headers, send, outcome))
            elif "websocket.http.response" in scope.get("extensions", {}):
                outcome["status"] = refusal[0]
                await _json_error(send, scope, *refusal, message="websocket.http.response")
            else:
                await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        finally:
            if outcome["status"] == 101:
                metrics.SOCKETS_OPEN.dec()
            request_id.reset(token)
            route = getattr(scope.get("route"), "path", None) or _unrouted(scope)
            status, ms = outcome["status"], round((time.perf_counter() - started) * 1000, 1)
            logger.info("WS %s %s", route, status, extra={"method": "WS", "route": route, "status": status, "ms": ms})

    def _socket_send(self, scope: Scope, headers: Headers, send: Send, outcome: dict[str, int]) -> Send:
        no_new_cookie = not self.cross_site.may_set_cookie(headers)

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "websocket.accept":
                outcome["status"] = 101
                metrics.SOCKETS_OPEN.inc()
                cookie = scope.get("state", {}).get(NEW_COOKIE)
                if cookie is not None and not no_new_cookie:
                    set_cookie = (b"set-cookie", self._cookie(scope, cookie).encode("latin-1"))
                    message = {**message, "headers": [*message.get("headers", []), set_cookie]}
            elif message["type"] == "websocket.http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        return send_wrapped

    def _security_headers(self, headers: MutableHeaders) -> None:
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if self.html_csp and headers.get("content-type", "").startswith("text/html"):
            headers.setdefault("Content-Security-Policy", self.html_csp)

    def _cookie(self, scope: Scope, value: str) -> str:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return f"{self.cookie_name}={value}; Max-Age={self.cookie_max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"


async def _json_error(
    send: Send, scope: Scope, status: int, code: str, detail: str, *, message: str = "http.response"
) -> None:
    """Answer `{"code", "detail"}` (`message`: "websocket.http.response" to refuse a handshake)."""
    body = orjson.dumps(error_body(scope, status, code, detail))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": message + ".start", "status": status, "headers": headers})
    await send({"type": message + ".body", "body": body})


def _request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
    return incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)


def _unrouted(scope: Scope) -> str:
    # Static files, and paths that matched nothing: never the raw path (unbounded label values).
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"
