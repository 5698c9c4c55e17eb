"""Persona routes."""

from __future__ import annotations

from fastapi import APIRouter

from personachat.web.deps import PersonasDep, SettingsDep
from personachat.web.params import ERRORS
from personachat.web.schemas import RoleInfo, RolesResponse

router = APIRouter(responses=ERRORS, tags=["personas"])


@router.get("/roles", response_model=RolesResponse)
async def roles(personas: PersonasDep, settings: SettingsDep) -> RolesResponse:
    """The personas, and whether the offline demo model is the one answering."""
    return RolesResponse(
        roles=[RoleInfo(key=p.key, name=p.name, description=p.description) for p in personas],
        default_role=personas.default_key,
        demo_model=settings.uses_demo_model,
    )
