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


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatError)
    async def chat_error(request: Request, exc: ChatError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}" for error in exc.errors()
        )
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        headers = dict(exc.headers or {})
        if status == 400 and exc.__cause__ is not None:
            # FastAPI's "error parsing the body": invalid UTF-8, or JSON nested too deep to
            # parse. The same answer as any other body that is not JSON.
            return error_response(422, "invalid_request", "body: the request body is not valid JSON (UTF-8).")
        if status == 405:
            # Matched from the top: a mounted app (the static files) raises with its own root_path.
            scope = {**request.scope, "root_path": request.scope.get("app_root_path", request.scope["root_path"])}
            headers["Allow"] = ", ".join(allowed_methods(request.app, scope))
        if status < 200 or status in (204, 304):
            return Response(status_code=status, headers=headers)
        phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
        return error_response(status, HTTP_CODES.get(status, "http_error"), detail, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only reached for an error raised outside the one middleware's hook (which renders
        # and logs every other one); uvicorn logs this one, so it is not logged here.
        return JSONResponse(ChatError().to_dict(), status_code=500)


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
        await JSONResponse(ChatError().to_dict(), status_code=500)(scope, receive, send)
