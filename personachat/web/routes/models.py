"""The models clients may choose (`GET /models`) and the caller's token usage (`GET /usage`)."""

from __future__ import annotations

from fastapi import APIRouter

from personachat.web.deps import IdentityDep, ModelsDep, UsageDep
from personachat.web.params import ERRORS
from personachat.web.schemas import ModelInfo, ModelsResponse, ModelUsage, UsageResponse

router = APIRouter(responses=ERRORS)


@router.get("/models", response_model=ModelsResponse, tags=["models"])
async def list_models(models: ModelsDep) -> ModelsResponse:
    """The models a client may name as `model` (POST /chat/start, a send), and the default."""
    registry = models.registry
    return ModelsResponse(
        models=[ModelInfo(**entry.public()) for entry in registry.models.values()],
        default_model=registry.default_model,
    )


@router.get("/usage", response_model=UsageResponse, tags=["models"])
async def usage(identity: IdentityDep, store: UsageDep) -> UsageResponse:
    """The caller's token totals, as the providers reported them, overall and by model."""
    totals = await store.totals(identity.user_id)
    return UsageResponse(
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        turns=totals.turns,
        by_model={model: ModelUsage(**counts) for model, counts in totals.by_model.items()},
    )
