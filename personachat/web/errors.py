"""Rendering errors: every error a client gets is JSON `{"code", "detail"}` with a stable code.

Three sources, one shape:
- the service's own `ChatError` family (`personachat.errors`);
- the framework's: an unknown path (404 `not_found`), a method the path does not have (405
  `method_not_allowed`, with an `Allow` header listing every method of that path, not just
  the first route's), a body that is not JSON (422 `invalid_request`, whatever the cause:
  a syntax error, invalid UTF-8, nesting too deep for the parser), a failed validation
  (422 `invalid_request`); the static files mount raises the same exceptions;
- a bug: 500 `internal_error`, logged once with its traceback (`unhandled`, called by the
  one middleware), not again by Starlette's ServerErrorMiddleware or by uvicorn.

Under `/v1` (the OpenAI-compatible API) the same errors, with the same status and code, take
OpenAI's shape instead, `{"error": {"message", "type", "param", "code"}}`, which the OpenAI
SDKs read (`type` by status: `OPENAI_TYPES`). Bad input there is a 400 (where the rest of
the API says 422), as OpenAI answers it; a failed validation names its first field in
`param`. The body limit's 413 and the middleware's refusals follow the same rule
(`error_body`); only the errors the HTTP server writes itself, before any route is known
(414, 431, 408: `web.server`), are `{"code", "detail"}` everywhere.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personachat.errors import ChatError

logger = logging.getLogger("personachat")

# Stable codes for the framework's own HTTP errors.
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


OPENAI_PREFIX = "/v1"
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def app_path(scope: Scope) -> str:
    """The request's path within the app (without a proxy's prefix, uvicorn --root-path)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def is_openai_path(scope: Scope) -> bool:
    path = app_path(scope)
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(status: int, code: str, detail: str, param: str | None = None) -> dict[str, Any]:
    """An error in the shape of OpenAI's API."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": detail, "type": kind, "param": param, "code": code}}


def error_body(scope: Scope | None, status: int, code: str, detail: str) -> dict[str, Any]:
    """`{"code", "detail"}`; OpenAI's shape for a request under /v1."""
    if scope is not None and is_openai_path(scope):
        return openai_error(status, code, detail)
    return {"code": code, "detail": detail}


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, *, scope: Scope | None = None
) -> JSONResponse:
    return JSONResponse(error_body(scope, status, code, detail), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatError)
    async def chat_error(request: Request, exc: ChatError) -> JSONResponse:
        if is_openai_path(request.scope):
            status = 400 if exc.status_code == 422 else exc.status_code  # OpenAI's status for bad input
            return JSONResponse(openai_error(status, exc.code, exc.message), status_code=status, headers=exc.headers)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [".".join(str(part) for part in error["loc"][1:]) for error in errors]
        problems = "; ".join(f"{field or 'body'}: {error['msg']}" for field, error in zip(fields, errors, strict=True))
        if is_openai_path(request.scope):
            body = openai_error(400, "invalid_request", problems or "invalid request", fields[0] if fields else None)
            return JSONResponse(body, status_code=400)
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        headers = dict(exc.headers or {})
        if status == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": invalid UTF-8, or JSON nested too deep to
            # parse. The same answer as any other body that is not JSON.
            detail = "body: the request body is not valid JSON (UTF-8)."
            if is_openai_path(request.scope):
                return error_response(400, "invalid_request", detail, scope=request.scope)
            return error_response(422, "invalid_request", detail)
        if status == 405:
            # Matched from the top: a mounted app (the static files) raises with its own root_path.
            scope = {**request.scope, "root_path": request.scope.get("app_root_path", request.scope["root_path"])}
            headers["Allow"] = ", ".join(allowed_methods(request.app, scope))
        if status < 200 or status in (204, 304):
            return Response(status_code=status, headers=headers)
        phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
        return error_response(status, HTTP_CODES.get(status, "http_error"), detail, headers, scope=request.scope)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only reached for an error raised outside the one middleware's hook (which renders
        # and logs every other one); uvicorn logs this one, so it is not logged here.
        return _internal_error(request.scope)


def allowed_methods(app: ASGIApp, scope: Scope) -> list[str]:
    """Every method some route of this path answers (Starlette's 405 names only the first route's).

    A path that a route names literally (`/roles/import`) is that route's alone, as in the
    OpenAPI schema, even where a template (`/roles/{key}`) would match it too."""
    literal: set[str] = set()
    templated: set[str] = set()
    for route, methods in _matching_routes(app, scope):
        (templated if "{" in getattr(route, "path", "{") else literal).update(methods)
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(literal or templated, key=lambda method: order.index(method) if method in order else len(order))


def _matching_routes(app: ASGIApp, scope: Scope) -> Iterator[tuple[Any, set[str]]]:
    for route in getattr(app, "routes", []):
        included = getattr(route, "original_router", None)  # FastAPI's include_router() (no prefix here)
        if included is not None:
            yield from _matching_routes(included, scope)
            continue
        match, _ = route.matches(scope)  # PARTIAL: the path matches, the method does not
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            yield route, {"GET", "HEAD"}  # the static files mount
        else:
            yield route, set(getattr(route, "methods", None) or ())


async def unhandled(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`; a bug it raises before answering is logged once and answered 500 JSON.

    After the response has started nothing can be answered: the error is raised on, and
    uvicorn logs it (once: nothing here did) and closes the connection.
    """
    started = False

    async def send_tracked(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, send_tracked)
    except Exception as exc:
        if started:
            raise
        logger.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
        await _internal_error(scope)(scope, receive, send)


def _internal_error(scope: Scope) -> JSONResponse:
    error = ChatError()
    return error_response(500, error.code, error.message, scope=scope)
