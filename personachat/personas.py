"""Personas ("roles"): the built-in presets, plus an optional ROLES_FILE that adds or overrides them.

A persona is a system prompt with a name and a description, and may pin its own model and
temperature. The catalog is loaded once at start-up; a bad roles file stops start-up with
a message naming the file and the problem, rather than failing on the first chat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personachat.errors import UnknownRole


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


class PersonaFileError(Exception):
    """The roles file cannot be used; the message names the file and the problem."""


class PersonaCatalog:
    """The personas available to this service, in display order."""

    def __init__(self, personas: list[Persona], default_key: str) -> None:
        self._by_key = {persona.key: persona for persona in personas}
        if default_key not in self._by_key:
            raise PersonaFileError(f"default role {default_key!r} is not a persona (have: {', '.join(self._by_key)})")
        self.default_key = default_key

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    @property
    def keys(self) -> list[str]:
        return list(self._by_key)

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
    if roles_file is not None:
        file_default, from_file = _read_roles_file(roles_file)
        personas.update({persona.key: persona for persona in from_file})
        default_key = file_default or default_key
    try:
        return PersonaCatalog(list(personas.values()), default_key)
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
