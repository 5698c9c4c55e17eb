"""Request and response bodies of the HTTP API, as they appear in the OpenAPI schema (/docs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from personachat.web.craft_schemas import (
    CLIENT_MESSAGE_ID_DESCRIPTION,
    CLIENT_MESSAGE_ID_PATTERN,
    FROM_TURN_DESCRIPTION,
)

if TYPE_CHECKING:
    from personachat.turns import TurnRequest

# What a sendable message looks like: at least one character that is not whitespace.
MESSAGE_PATTERN = r"\S"


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(None, description="Persona key from /roles; the default persona when omitted.")
    title: str | None = Field(None, max_length=200, description="Shown in the session list; else the first message.")
    model: str | None = Field(None, max_length=100, description="The session's model, an id from GET /models.")


class StartResponse(BaseModel):
    session_id: str
    role: str
    welcome_message: str = Field(description="For display only: not stored, not sent to the model.")
    created_at: str
    model: str | None = Field(None, description="The session's model, when one was chosen.")


def _message_required(schema: dict[str, Any]) -> None:
    # The schema describes a send, where `message` is required and a string; only a resume
    # (a request with Last-Event-ID, which sends nothing) may leave it out. JSON Schema cannot
    # make a body field depend on a header, so the exception is in the description.
    schema["required"] = [*schema.get("required", []), "message"]
    schema["properties"]["message"] = {
        "type": "string",
        "pattern": MESSAGE_PATTERN,
        "description": "The user's message (not only whitespace). May be left out when resuming with Last-Event-ID.",
    }


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_message_required)

    session_id: str
    message: str | None = None  # see _message_required: None only when resuming
    role: str | None = Field(None, description="Persona for this message (and the session from now on).")
    from_turn: str | None = Field(None, description=FROM_TURN_DESCRIPTION)
    client_message_id: str | None = Field(
        None, pattern=CLIENT_MESSAGE_ID_PATTERN, description=CLIENT_MESSAGE_ID_DESCRIPTION
    )
    model: str | None = Field(None, max_length=100, description="The model for this message, an id from GET /models.")

    def turn_request(self, user: str) -> TurnRequest:
        """The send this body asks for, as `TurnService.start` takes it."""
        from personachat.turns import TurnRequest  # (turns imports the store, which imports this module)

        return TurnRequest(
            user,
            self.session_id,
            self.message or "",
            self.role,
            model=self.model,
            from_turn=self.from_turn,
            client_message_id=self.client_message_id,
        )


class Message(BaseModel):
    """A stored message. Answers also carry `persona` (the persona that gave it), and an
    answer that was stopped before its end carries `"stopped": true`."""

    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str
    timestamp: str
    turn_id: str


class HistoryResponse(BaseModel):
    session_id: str
    role: str
    title: str
    messages: list[Message]
    total: int
    running_turn_id: str | None = Field(
        None, description="The turn being generated now; resume it with last_event_id=<turn id>:0."
    )
    model: str | None = Field(None, description="The session's model (POST /chat/start), if one was chosen.")


class SessionSummary(BaseModel):
    session_id: str
    title: str
    role: str
    created_at: str
    last_activity: str
    messages: int
    running_turn_id: str | None = None
    model: str | None = Field(
        None, description="The session's model (set at start or with PATCH); null: the persona's or the default."
    )


class SessionsResponse(BaseModel):
    sessions: list[SessionSummary]
    total: int


class ClearResponse(BaseModel):
    session_id: str
    cleared: bool = True


class DeleteResponse(BaseModel):
    session_id: str
    deleted: bool = True


class DeleteAllResponse(BaseModel):
    deleted: int = Field(description="How many sessions were deleted, with their messages.")
    skipped_running: list[str] = Field(
        description="Sessions left in place because an answer is being generated in them; stop it and call again."
    )


class StopResponse(BaseModel):
    session_id: str
    turn_id: str | None = Field(description="The turn that was asked to stop; null when none was running.")
    stopped: bool


class ErrorResponse(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. session_not_found.")
    detail: str = Field(description="Human-readable message.")


def install_openapi(
    app: FastAPI, role_keys: list[str], max_message_chars: int, model_ids: list[str] | None = None
) -> None:
    """Make /openapi.json say what this app accepts: the persona keys of its catalog as the
    choices of every `role`, the listed models as those of every `model`, and
    MAX_MESSAGE_CHARS as the longest `message`."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for name in ("StartRequest", "StreamRequest", "MessageRequest", "SessionPatch"):
                properties = schema["components"]["schemas"][name]["properties"]
                properties["role"] = _nullable_choice(properties["role"], role_keys)
                if name == "MessageRequest":
                    # Said in words, not as maxLength: a longer message is 413 (the stream's
                    # status, API.md), and schema checkers (schemathesis) take only 400/422-like
                    # statuses as the refusal of a value the schema forbids.
                    properties["message"]["description"] += (
                        f" At most {max_message_chars} characters (MAX_MESSAGE_CHARS): a longer one is 413"
                        " `message_too_long`."
                    )
                elif "message" in properties:
                    properties["message"]["maxLength"] = max_message_chars
            for name, component in schema["components"]["schemas"].items():
                if model_ids and name in ("StartRequest", "StreamRequest", "MessageRequest", "PersonaDraft"):
                    component["properties"]["model"] = _nullable_choice(component["properties"]["model"], model_ids)
            for path in schema["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        parameter["schema"] = _not_null(parameter["schema"])
            for operation in schema["paths"]["/chat/stream"].values():
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "role":
                        parameter["schema"] = {**parameter["schema"], "enum": role_keys}
                    elif parameter["name"] == "model" and model_ids:
                        parameter["schema"] = {**parameter["schema"], "enum": model_ids}
                    elif parameter["name"] == "message":
                        # Required for a send, like the body's (see _message_required).
                        parameter["required"] = True
                        parameter["schema"] = {
                            "type": "string",
                            "pattern": MESSAGE_PATTERN,
                            "maxLength": max_message_chars,
                            "description": parameter["schema"].get("description", ""),
                        }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _nullable_choice(schema: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    described: dict[str, Any] = {key: schema[key] for key in ("title", "description") if key in schema}
    return {"anyOf": [{"type": "string", "enum": keys}, {"type": "null"}], **described}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    # A query or header parameter is absent or a string, never null: `str | None` in the
    # signature means "optional", which `required: false` already says.
    choices = schema.get("anyOf", [])
    others = [choice for choice in choices if choice.get("type") != "null"]
    if len(choices) != 2 or len(others) != 1:
        return schema
    return {**others[0], **{key: value for key, value in schema.items() if key != "anyOf"}}


class ModelInfo(BaseModel):
    id: str
    provider: str
    context_window: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    default_model: str


class ModelUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    turns: int


class UsageResponse(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    turns: int = Field(description="Turns whose provider reported their usage.")
    by_model: dict[str, ModelUsage]
