"""Bodies of the /roles endpoints (personas, and personas of one's own), for the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RoleSummary(BaseModel):
    key: str
    name: str
    description: str
    source: Literal["builtin", "file", "user"] = Field(description="builtin, file (ROLES_FILE) or user (your own).")
    editable: bool = Field(description="True for your own personas: PUT and DELETE work on them.")


class RoleList(BaseModel):
    roles: list[RoleSummary]
    default_role: str
    demo_model: bool = Field(description="True when the built-in offline demo model answers (no model configured).")
    max_personas: int = Field(description="How many personas of one's own a user may keep (MAX_PERSONAS_PER_USER).")


class PersonaOut(BaseModel):
    key: str
    name: str
    description: str
    system_prompt: str
    welcome_message: str
    model: str | None
    temperature: float | None
    source: Literal["builtin", "file", "user"]
    editable: bool
    created_at: str | None = Field(None, description="Your own personas only.")
    updated_at: str | None = Field(None, description="Your own personas only.")


class PersonaDeleted(BaseModel):
    key: str
    deleted: bool = True
