"""Personas ("roles"): the built-in presets, an optional ROLES_FILE that adds or overrides
them, and each user's own personas (kept in Redis by store/personas.py).

A persona is a system prompt with a name and a description, and may pin its own model and
temperature. The catalog is loaded once at start-up; a bad roles file stops start-up with
a message naming the file and the problem, rather than failing on the first chat.

`PersonaResolver` is what the routes and turns use: for one user, the catalog plus that
user's own personas. Another user's persona does not exist for the caller. Own personas
have server-chosen keys (`u-` and 12 hex digits) that no catalog persona has, so a key
names one persona for a user; the catalog and built-ins are read-only.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personachat import cards
from personachat.errors import (
    InvalidCard,
    InvalidRequest,
    PersonaNotFound,
    ReadOnlyPersona,
    TooManyPersonas,
    UnknownRole,
)
from personachat.store.personas import PersonaStore


class Persona(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    name: str = Field(min_length=1, max_length=80)
    description: str = Field(min_length=1, max_length=300)
    system_prompt: str = Field(min_length=1, max_length=20_000)
    welcome_message: str = Field("", max_length=2_000)
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)


BUILT_IN: tuple[Persona, ...] = (
    Persona(
        key="assistant",
        name="Assistant",
        description="A helpful general assistant: clear, direct answers to everyday questions.",
        system_prompt=(
            "You are a helpful, honest assistant. Answer clearly and directly, in the language "
            "the user writes in. Prefer short paragraphs and lists; use Markdown when it helps. "
            "When you are unsure, say so instead of guessing, and ask a clarifying question "
            "when a request is ambiguous."
        ),
        welcome_message="Hello! I'm your assistant. What can I help you with today?",
    ),
    Persona(
        key="teacher",
        name="Teacher",
        description="A patient teacher who explains step by step and checks your understanding.",
        system_prompt=(
            "You are a patient, encouraging teacher. Explain ideas step by step, starting from "
            "what the learner already knows, with one concrete example for each new idea. "
            "Keep each step small, define new terms when you first use them, and end with a "
            "short question that checks understanding. If the learner makes a mistake, point "
            "to it kindly and guide them to correct it themselves rather than just giving the "
            "answer. Answer in the language the learner writes in."
        ),
        welcome_message="Hi! I'm your teacher. What would you like to learn today?",
        temperature=0.5,
    ),
    Persona(
        key="programmer",
        name="Programmer",
        description="A senior software engineer: working code, reviews, debugging and design advice.",
        system_prompt=(
            "You are a senior software engineer. Give correct, idiomatic, working code in "
            "fenced Markdown code blocks with the language named, and explain the key decisions "
            "briefly. Prefer the standard library and well-known, maintained packages. Point out "
            "bugs, security problems and edge cases you notice. When requirements are unclear, "
            "state your assumptions. Be concise: code first, then a few lines of explanation."
        ),
        welcome_message="Hi, I'm your programming partner. Paste code or describe the problem.",
        temperature=0.2,
    ),
)


Source = Literal["builtin", "file", "user"]


class PersonaFileError(Exception):
    """The roles file cannot be used; the message names the file and the problem."""


class PersonaCatalog:
    """The personas available to this service, in display order."""

    def __init__(self, personas: list[Persona], default_key: str, from_file: set[str] | None = None) -> None:
        self._by_key = {persona.key: persona for persona in personas}
        self._from_file = from_file or set()
        if default_key not in self._by_key:
            raise PersonaFileError(f"default role {default_key!r} is not a persona (have: {', '.join(self._by_key)})")
        self.default_key = default_key

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    @property
    def keys(self) -> list[str]:
        return list(self._by_key)

    def source(self, key: str) -> Source:
        return "file" if key in self._from_file else "builtin"

    def get(self, key: str | None) -> Persona:
        """The persona for `key` (the default when None); UnknownRole lists the valid keys."""
        persona = self._by_key.get(key if key is not None else self.default_key)
        if persona is None:
            raise UnknownRole(str(key), self.keys)
        return persona


def load_catalog(roles_file: Path | None, default_key: str = "assistant") -> PersonaCatalog:
    """The built-in personas, updated with those of `roles_file` (YAML or JSON), if given.

    The file is either a mapping of key -> persona fields, or `{"roles": <that mapping>,
    "default_role": key}`. A persona in the file with a built-in key replaces the preset.
    """
    personas = {persona.key: persona for persona in BUILT_IN}
    file_keys: set[str] = set()
    if roles_file is not None:
        file_default, from_file = _read_roles_file(roles_file)
        personas.update({persona.key: persona for persona in from_file})
        file_keys = {persona.key for persona in from_file}
        default_key = file_default or default_key
    try:
        return PersonaCatalog(list(personas.values()), default_key, file_keys)
    except PersonaFileError as exc:
        raise PersonaFileError(f"{roles_file or 'settings'}: {exc}") from None


def _read_roles_file(path: Path) -> tuple[str | None, list[Persona]]:
    def fail(problem: str) -> PersonaFileError:
        return PersonaFileError(f"roles file {path}: {problem}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise fail(f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if isinstance(data, dict) and "roles" in data:
        default_key, roles = data.get("default_role"), data["roles"]
    else:
        default_key, roles = None, data
    if not isinstance(roles, dict) or not roles:
        raise fail("expected a mapping of role key -> {name, description, system_prompt, ...}")
    if default_key is not None and not isinstance(default_key, str):
        raise fail("default_role must be a string")
    personas = []
    for key, fields in roles.items():
        if not isinstance(fields, dict):
            raise fail(f"role {key!r} must be a mapping of fields")
        try:
            personas.append(Persona(key=str(key), **fields))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'role'}: {err['msg']}" for err in exc.errors()
            )
            raise fail(f"role {key!r}: {problems}") from None
    return default_key, personas


# -- personas of one's own -------------------------------------------------------------------

OWN_KEY = re.compile(r"u-[0-9a-f]{12}")
NAME_CHARS = 80
SYSTEM_PROMPT_CHARS = 16_000
DESCRIPTION_CHARS = 300
WELCOME_CHARS = 4_000
MODEL_CHARS = 100


# Text is trimmed before its length is checked: the schema says that blank text is refused.
_NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}


class PersonaDraft(BaseModel):
    """What a user sends to create or replace a persona of their own (text is trimmed).

    `model` is any model name for now; once the service lists its models (GET /models), it
    will have to be one of them."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(
        min_length=1, max_length=NAME_CHARS, description="Shown in the persona menu.", json_schema_extra=_NOT_BLANK
    )
    system_prompt: str = Field(
        min_length=1,
        max_length=SYSTEM_PROMPT_CHARS,
        description="The system message of every prompt.",
        json_schema_extra=_NOT_BLANK,
    )
    description: str = Field("", max_length=DESCRIPTION_CHARS, description="One line for the persona menu.")
    welcome_message: str = Field("", max_length=WELCOME_CHARS, description="Shown when a chat starts; not stored.")
    model: str | None = Field(
        None, min_length=1, max_length=MODEL_CHARS, description="The model that answers.", json_schema_extra=_NOT_BLANK
    )
    temperature: float | None = Field(None, ge=0, le=2, strict=True)  # true is not a temperature


@dataclass(frozen=True)
class PersonaEntry:
    """A persona as one user sees it: where it comes from, and whether they may change it."""

    persona: Persona
    source: Source
    editable: bool
    created_at: str | None = None
    updated_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.persona.model_dump(),
            "source": self.source,
            "editable": self.editable,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(record: dict[str, Any]) -> PersonaEntry:
    fields = {name: record.get(name) for name in PersonaDraft.model_fields}
    # Validated when written (PersonaDraft); the key is the server's own.
    persona = Persona.model_construct(
        key=record["key"],
        name=fields["name"] or record["key"],
        description=fields["description"] or "",
        system_prompt=fields["system_prompt"] or "",
        welcome_message=fields["welcome_message"] or "",
        model=fields["model"],
        temperature=fields["temperature"],
    )
    return PersonaEntry(persona, "user", True, record.get("created_at"), record.get("updated_at"))


class PersonaResolver:
    """The personas of one user: the catalog's (read-only) and the user's own."""

    def __init__(self, catalog: PersonaCatalog, store: PersonaStore, *, max_per_user: int) -> None:
        self.catalog = catalog
        self._store = store
        self.max_per_user = max_per_user
        # The models a persona may pin (GET /models); None: any (set by the app's lifespan).
        self.model_ids: frozenset[str] | None = None

    @property
    def default_key(self) -> str:
        return self.catalog.default_key

    async def list(self, user: str | None) -> list[PersonaEntry]:
        """The catalog's personas in display order, then the user's own, oldest first."""
        own = [_entry(record) for record in await self._store.list(user)] if user else []
        shared = [PersonaEntry(p, self.catalog.source(p.key), False) for p in self.catalog]
        return shared + own

    async def resolve(self, user: str, key: str | None) -> Persona:
        """The persona `key` names for `user` (the default when None); UnknownRole (400)
        lists every key the user may use."""
        if key is None or key in self.catalog.keys:
            return self.catalog.get(key)
        record = await self._store.get(user, key) if OWN_KEY.fullmatch(key) else None
        if record is None:
            own = [entry.persona.key for entry in await self.list(user) if entry.source == "user"]
            raise UnknownRole(key, [*self.catalog.keys, *own])
        return _entry(record).persona

    async def for_session(self, user: str, key: str) -> Persona:
        """The session's persona; the default one when it was deleted (or left the roles file)."""
        try:
            return await self.resolve(user, key or None)
        except UnknownRole:
            return self.catalog.get(None)

    async def get(self, user: str, key: str) -> PersonaEntry:
        if key in self.catalog.keys:
            return PersonaEntry(self.catalog.get(key), self.catalog.source(key), False)
        record = await self._store.get(user, key) if OWN_KEY.fullmatch(key) else None
        if record is None:
            raise PersonaNotFound()
        return _entry(record)

    def _check_model(self, draft: PersonaDraft) -> None:
        if draft.model is not None and self.model_ids is not None and draft.model not in self.model_ids:
            valid = ", ".join(sorted(self.model_ids))
            raise InvalidRequest(f"model: {draft.model[:100]!r} is not one of the models ({valid}).")

    async def create(self, user: str, draft: PersonaDraft) -> PersonaEntry:
        self._check_model(draft)
        now = _now()
        for _ in range(5):
            key = f"u-{secrets.token_hex(6)}"
            if key in self.catalog.keys:
                continue
            record = {"key": key, **draft.model_dump(), "created_at": now, "updated_at": now}
            status = await self._store.create(user, record, self.max_per_user)
            if status == "full":
                raise TooManyPersonas(self.max_per_user)
            if status == "ok":
                return _entry(record)
        raise RuntimeError("no free persona key after 5 tries")  # 48 random bits: never in practice

    async def replace(self, user: str, key: str, draft: PersonaDraft) -> PersonaEntry:
        self._check_own(key)
        self._check_model(draft)
        record = {"key": key, **draft.model_dump(), "created_at": "", "updated_at": _now()}
        stored = await self._store.replace(user, record) if OWN_KEY.fullmatch(key) else None
        if stored is None:
            raise PersonaNotFound()
        return _entry(stored)

    async def delete(self, user: str, key: str) -> None:
        self._check_own(key)
        if not (OWN_KEY.fullmatch(key) and await self._store.delete(user, key)):
            raise PersonaNotFound()

    async def import_card(self, user: str, card: dict[str, Any]) -> PersonaEntry:
        """Create a persona from a character card (V2 or V1, already parsed from JSON or PNG)."""
        draft = draft_from_card(card)
        if draft.model is not None and self.model_ids is not None and draft.model not in self.model_ids:
            draft = draft.model_copy(update={"model": None})  # a card made elsewhere: this service's default
        return await self.create(user, draft)

    def _check_own(self, key: str) -> None:
        if key in self.catalog.keys:
            raise ReadOnlyPersona()


# Where each persona field comes from in a card, to name it when it is out of bounds.
CARD_SOURCES = {
    "name": "name",
    "system_prompt": "system_prompt + description + personality + scenario + mes_example (the system prompt)",
    "welcome_message": "first_mes (the welcome message)",
    "description": "creator_notes",
    "model": "extensions.personachat.model",
    "temperature": "extensions.personachat.temperature",
}


def draft_from_card(card: dict[str, Any]) -> PersonaDraft:
    """The persona a card maps to (see personachat.cards); InvalidCard names a bad field."""
    fields = cards.card_fields(card)
    try:
        return PersonaDraft(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{CARD_SOURCES.get(str(err['loc'][0]), 'card') if err['loc'] else 'card'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidCard(f"The card does not make a valid persona: {problems}.") from None


def card_of(entry: PersonaEntry) -> dict[str, Any]:
    """The persona as a Character Card V2 document."""
    return cards.to_card(entry.persona.model_dump())
