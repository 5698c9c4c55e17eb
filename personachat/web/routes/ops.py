"""Operations routes: liveness, readiness, the chat page and the API docs. (`GET /metrics`
is in `metrics`.)

Both HTML pages load only this server's files, under a Content-Security-Policy: the chat
page its own modules, `/docs` the Swagger UI vendored in static/vendor/swagger-ui (so it
works offline and no CDN can change what runs there). ReDoc is off: it would need a CDN.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from personachat.errors import StoreUnavailable
from personachat.store.client import UNREACHABLE
from personachat.web.deps import ServicesDep
from personachat.web.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parents[3] / "static"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

# The same policy serves /docs: Swagger UI shows icons as data: URLs and sets its styles
# through the DOM (CSSOM), which style-src 'self' allows (tests/web/test_cross_site.py checks).
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/js/docs.js"></script>
</body>
</html>
"""

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(services: ServicesDep) -> dict[str, str]:
    """Redis is reachable (503 otherwise)."""
    try:
        await services.redis.ping()
    except UNREACHABLE as exc:
        raise StoreUnavailable() from exc
    return {"status": "ready"}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI schema, from this server's own files."""
    openapi_url = request.scope.get("root_path", "") + (request.app.openapi_url or "/openapi.json")
    page = DOCS_PAGE.format(title=html.escape(f"{request.app.title} - API"), openapi_url=html.escape(openapi_url))
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})
