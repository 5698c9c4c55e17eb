"""The HTTP routes, one module per resource. Each validates its input, calls one service, and
shapes the answer; none names a Redis key or a model parameter."""

from fastapi import APIRouter

from personachat.metrics import router as metrics_router
from personachat.web.routes import chat, messages, models, openai_api, ops, roles, sessions, ws

router = APIRouter()
# Paths whose route reads its body with a bound of its own, instead of MAX_BODY_BYTES.
BOUNDED_BY_THEIR_ROUTE = ("/roles/import",)
for module_router in (
    chat.router,
    messages.router,
    sessions.router,
    roles.router,
    ops.router,
    metrics_router,
    models.router,
    openai_api.router,
    ws.router,
):
    router.include_router(module_router)
