"""The models clients may choose, and the providers that serve them (`MODELS_FILE`).

A provider is an OpenAI-compatible API (a base URL, a key read from the environment variable
it names, never from the file); a model is what clients send as `model`, with the
provider's own name for it (`upstream`), its `context_window` and `max_output_tokens`.
Without MODELS_FILE there is one provider made from the `OPENAI_*` settings with the one
model OPENAI_MODEL (or the offline demo model).

Guarantees:
- the file is validated when the app is built: a bad file stops start-up with a message that
  names the file, the provider and the field;
- keys are `SecretStr`: they appear in no repr, log line or error message;
- `ModelRegistry.choose` applies API.md's precedence (send > session > persona > default); a
  model the client names that is not listed is 400 `unknown_model`, listing the valid ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from config import Settings
from personachat.errors import ChatError

DEFAULT_CONTEXT_WINDOW = 8192
DEMO_PROVIDER = "demo"
DEMO_MODEL = "offline-demo"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$"


class UnknownModel(ChatError):
    status_code = 400
    code = "unknown_model"

    def __init__(self, model: str, valid: list[str]) -> None:
        super().__init__(f"Unknown model {model[:100]!r}. Valid models: {', '.join(valid)}.")


class ModelsFileError(Exception):
    """MODELS_FILE cannot be used; the message names the file, the provider and the field."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=NAME_PATTERN)
    upstream: str | None = Field(None, min_length=1, max_length=200)
    context_window: int = Field(DEFAULT_CONTEXT_WINDOW, ge=256, le=100_000_000)
    max_output_tokens: int | None = Field(None, ge=1, le=10_000_000)


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    base_url: str = Field(pattern=r"^https?://\S+$")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Ask for `stream_options: {"include_usage": true}`; off for APIs that refuse the option.
    stream_usage: bool = True
    models: list[ModelSpec] = Field(min_length=1)


class ModelsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_model: str | None = None
    providers: list[ProviderSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str | None  # None: OpenAI's
    api_key: SecretStr | None
    stream_usage: bool = True
    demo: bool = False  # the offline demo model, started by the lifespan (its URL known then)


@dataclass(frozen=True)
class ModelEntry:
    id: str
    provider: str
    upstream: str
    context_window: int = DEFAULT_CONTEXT_WINDOW
    max_output_tokens: int | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "context_window": self.context_window}


class ModelRegistry:
    """The listed models, their providers and the default model."""

    def __init__(self, providers: list[Provider], models: list[ModelEntry], default_model: str) -> None:
        self.providers = {provider.name: provider for provider in providers}
        self.models = {model.id: model for model in models}
        if default_model not in self.models:
            raise ModelsFileError(f"default_model {default_model!r} is not one of the models: {', '.join(self.ids)}")
        self.default_model = default_model

    @property
    def ids(self) -> list[str]:
        return list(self.models)

    def get(self, model_id: str) -> ModelEntry:
        """The model a client named; UnknownModel (400) when it is not listed."""
        entry = self.models.get(model_id)
        if entry is None:
            raise UnknownModel(model_id, self.ids)
        return entry

    def choose(self, send: str | None, session: str | None, persona: str | None) -> ModelEntry:
        """The model that answers: the send's, else the session's, else the persona's, else the
        default. The send's must be listed (400); a session's or persona's model that is no
        longer listed (the file changed since) is skipped, not an error of this request."""
        if send is not None:
            return self.get(send)
        for candidate in (session, persona):
            if candidate and candidate in self.models:
                return self.models[candidate]
        return self.models[self.default_model]


def load_models(settings: Settings, environ: Mapping[str, str] | None = None) -> ModelRegistry:
    """The registry of MODELS_FILE, else of the OPENAI_* settings (or the offline demo model).

    Keys are read from the environment variables the file names (`environ`, the process
    environment by default): the one place outside config.py that reads the environment,
    because the file chooses the variables' names.
    """
    if settings.models_file is None:
        return _from_settings(settings)
    return _from_file(settings.models_file, os.environ if environ is None else environ)


def _from_settings(settings: Settings) -> ModelRegistry:
    if settings.uses_demo_model:
        provider = Provider(DEMO_PROVIDER, None, None, demo=True)
        return ModelRegistry([provider], [ModelEntry(DEMO_MODEL, DEMO_PROVIDER, DEMO_MODEL)], DEMO_MODEL)
    provider = Provider("openai", settings.openai_base_url, settings.openai_api_key)
    model = ModelEntry(settings.openai_model, provider.name, settings.openai_model)
    return ModelRegistry([provider], [model], model.id)


def _from_file(path: Path, environ: Mapping[str, str]) -> ModelRegistry:
    def fail(problem: str) -> ModelsFileError:
        return ModelsFileError(f"models file {path}: {problem}")

    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {exc}") from None
    try:
        document = ModelsDocument.model_validate(data)
    except ValidationError as exc:
        raise fail("; ".join(_describe(error, data) for error in exc.errors())) from None
    providers: list[Provider] = []
    models: list[ModelEntry] = []
    for spec in document.providers:
        if spec.name in {provider.name for provider in providers}:
            raise fail(f"provider {spec.name!r}: name: used by two providers")
        key: SecretStr | None = None
        if spec.api_key_env is not None:
            value = environ.get(spec.api_key_env, "")
            if not value:
                raise fail(f"provider {spec.name!r}: api_key_env: the variable {spec.api_key_env} is not set")
            key = SecretStr(value)
        providers.append(Provider(spec.name, spec.base_url.rstrip("/"), key, spec.stream_usage))
        for model in spec.models:
            if any(known.id == model.id for known in models):
                raise fail(f"provider {spec.name!r}: models: id {model.id!r} is listed twice")
            upstream = model.upstream or model.id
            models.append(ModelEntry(model.id, spec.name, upstream, model.context_window, model.max_output_tokens))
    default = document.default_model or models[0].id
    if default not in {model.id for model in models}:
        raise fail(f"default_model: {default!r} is not one of the models ({', '.join(m.id for m in models)})")
    return ModelRegistry(providers, models, default)


def check_persona_models(registry: ModelRegistry, pinned: Mapping[str, str | None], source: str) -> None:
    """Every persona that pins a model (key -> model) pins a listed one; else ModelsFileError."""
    for key, model in pinned.items():
        if model is not None and model not in registry.models:
            raise ModelsFileError(
                f"{source}: role {key!r}: model {model!r} is not one of the models ({', '.join(registry.ids)})"
            )


def _describe(error: Any, data: Any) -> str:
    """`provider 'openai': models[0].context_window: <problem>` for a pydantic error."""
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "providers" and isinstance(loc[1], int):
        name = None
        providers = data.get("providers") if isinstance(data, dict) else None
        if isinstance(providers, list) and loc[1] < len(providers) and isinstance(providers[loc[1]], dict):
            name = providers[loc[1]].get("name")
        where = f"provider {name!r}: " if name else f"providers[{loc[1]}]: "
        loc = loc[2:]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{where}{field or 'file'}: {error['msg']}"
