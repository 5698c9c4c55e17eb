"""Persona routes: the caller's personas (the catalog's and their own), and character cards."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response, status

from personachat.cards import MAX_CARD_BYTES, parse_card_bytes, png_with_card
from personachat.errors import InvalidApiKey, InvalidCard, NotAuthenticated
from personachat.identity import Identity
from personachat.personas import PersonaDraft, card_of
from personachat.web.deps import IdentityDep, PersonasDep, ServicesDep, SettingsDep
from personachat.web.params import ERRORS
from personachat.web.persona_schemas import PersonaDeleted, PersonaOut, RoleList, RoleSummary

router = APIRouter(responses={**ERRORS, 403: ERRORS[404]}, tags=["personas"])

# The types an HTML form on another site can send without a CORS preflight: a card never
# comes as one of them, so refusing them keeps a cross-site form from importing into a
# visitor's personas with their cookie (whatever the cross-site check of the middleware does).
FORM_TYPES = {"text/plain", "multipart/form-data", "application/x-www-form-urlencoded"}

# What the import reads of a card (cards.card_fields): text fields, the name required.
_TEXT: dict[str, Any] = {"type": ["string", "null"]}
CARD_FIELDS: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"\S", "maxLength": 80},
        "first_mes": {"type": ["string", "null"], "maxLength": 4_000},
        **{field: _TEXT for field in ("description", "personality", "scenario", "mes_example", "system_prompt")},
        "creator_notes": _TEXT,
    },
}
CARD_V2: dict[str, Any] = {
    "title": "Character Card V2",
    "type": "object",
    "required": ["spec", "data"],
    "properties": {"spec": {"enum": ["chara_card_v2", "chara_card_v3"]}, "data": CARD_FIELDS},
}
CARD_V1: dict[str, Any] = {"title": "Character Card V1 (flat)", "allOf": [CARD_FIELDS, {"not": {"required": ["spec"]}}]}

CARD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"A character card: V2 or V1 JSON, or a PNG with a 'chara' text chunk; at most "
        f"{MAX_CARD_BYTES // (1024 * 1024)} MB.",
        "content": {
            "application/json": {"schema": {"anyOf": [CARD_V2, CARD_V1]}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def optional_identity(request: Request, services: ServicesDep) -> Identity | None:
    """The caller, or None when anonymous identities are off and no key came (a wrong key is 401)."""
    try:
        return await services.identity.resolve(request)
    except InvalidApiKey:
        raise
    except NotAuthenticated:
        return None


@router.get("/roles", response_model=RoleList)
async def roles(
    identity: Annotated[Identity | None, Depends(optional_identity)], personas: PersonasDep, settings: SettingsDep
) -> RoleList:
    """The personas the caller may use: built-in, from ROLES_FILE, and their own. Public: with
    ALLOW_ANONYMOUS=false and no key, the built-in and file ones."""
    entries = await personas.list(identity.user_id if identity else None)
    return RoleList(
        roles=[
            RoleSummary(
                key=e.persona.key,
                name=e.persona.name,
                description=e.persona.description,
                source=e.source,
                editable=e.editable,
            )
            for e in entries
        ],
        default_role=personas.default_key,
        demo_model=settings.uses_demo_model,
        max_personas=personas.max_per_user,
    )


@router.post("/roles", response_model=PersonaOut, status_code=status.HTTP_201_CREATED)
async def create_role(identity: IdentityDep, personas: PersonasDep, body: PersonaDraft) -> PersonaOut:
    """Create a persona of one's own; the server picks its key (409 beyond MAX_PERSONAS_PER_USER)."""
    return PersonaOut(**(await personas.create(identity.user_id, body)).as_dict())


@router.post("/roles/import", response_model=PersonaOut, status_code=status.HTTP_201_CREATED, openapi_extra=CARD_BODY)
async def import_role(identity: IdentityDep, personas: PersonasDep, request: Request) -> PersonaOut:
    """Create a persona from a character card (Character Card V2 or V1 JSON, or a PNG card
    sent as `Content-Type: image/png`). A card that cannot be read is 422 naming the problem."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() in FORM_TYPES:
        raise InvalidCard("Send the card as Content-Type: application/json, or image/png for a PNG card.")
    card = parse_card_bytes(await _bounded_body(request), content_type)
    return PersonaOut(**(await personas.import_card(identity.user_id, card)).as_dict())


@router.get("/roles/{key}", response_model=PersonaOut)
async def get_role(identity: IdentityDep, personas: PersonasDep, key: str) -> PersonaOut:
    """The whole persona; another user's persona is 404, like one that does not exist."""
    return PersonaOut(**(await personas.get(identity.user_id, key)).as_dict())


@router.put("/roles/{key}", response_model=PersonaOut)
async def replace_role(identity: IdentityDep, personas: PersonasDep, key: str, body: PersonaDraft) -> PersonaOut:
    """Replace one of the caller's own personas (403 `read_only` for built-in and file ones)."""
    return PersonaOut(**(await personas.replace(identity.user_id, key, body)).as_dict())


@router.delete("/roles/{key}", response_model=PersonaDeleted)
async def delete_role(identity: IdentityDep, personas: PersonasDep, key: str) -> PersonaDeleted:
    """Delete one of the caller's own personas; sessions that used it go on with the default one."""
    await personas.delete(identity.user_id, key)
    return PersonaDeleted(key=key)


@router.get(
    "/roles/{key}/card",
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def role_card(
    identity: IdentityDep,
    personas: PersonasDep,
    key: str,
    format_: Annotated[
        Literal["json", "png"], Query(alias="format", description="`png`: a PNG card (a `chara` tEXt chunk).")
    ] = "json",
) -> Any:
    """The persona as a Character Card V2 JSON document (it imports back to the same persona);
    with `format=png`, the same card inside a small PNG image, as SillyTavern shares them."""
    entry = await personas.get(identity.user_id, key)
    card: dict[str, Any] = card_of(entry)
    if format_ == "json":
        return card
    filename = quote(f"{entry.persona.name}.png")
    headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"}
    return Response(png_with_card(card), media_type="image/png", headers=headers)


async def _bounded_body(request: Request) -> bytes:
    """The body, refused as soon as it is known to be too large (by Content-Length, or while reading)."""
    too_large = InvalidCard(f"The card file is larger than {MAX_CARD_BYTES // (1024 * 1024)} MB.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_CARD_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CARD_BYTES:
            raise too_large
    if not body:
        raise InvalidCard("Send the card as the request body (JSON, or a PNG image).")
    return bytes(body)
