"""Operations routes: liveness, readiness, the chat page. (`GET /metrics` is in `metrics`.)"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from personachat.errors import StoreUnavailable
from personachat.store.client import UNREACHABLE
from personachat.web.deps import ServicesDep
from personachat.web.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parents[3] / "static"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

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
