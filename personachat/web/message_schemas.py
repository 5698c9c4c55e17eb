"""Bodies of POST /chat/messages, the whole answer as one JSON object, for the OpenAPI schema.

The request is a send like POST /chat/stream's (the same fields, the same checks, so the same
errors), except that `message` is always required: a JSON answer has no resume.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from personachat.web.schemas import MESSAGE_PATTERN, StreamRequest


class MessageRequest(StreamRequest):
    # Not StreamRequest's schema hook, which makes `message` optional for a resume; the
    # pattern is documented, not validated here: a blank message is the turn's own 422
    # `empty_message`, as on the stream.
    model_config = ConfigDict(json_schema_extra=None)

    message: str = Field(
        description="The user's message (not only whitespace).", json_schema_extra={"pattern": MESSAGE_PATTERN}
    )


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class MessageResponse(BaseModel):
    """A turn's whole answer: what its `start` and `end` events said, and its text."""

    session_id: str
    turn_id: str = Field(description="The turn; `from_turn` of a later send may name it (regenerate, edit).")
    role: str = Field(description="The persona that answered.")
    model: str = Field(description="The model that answered (an id from GET /models).")
    content: str = Field(description="The answer, as stored in the history.")
    finish_reason: str = Field(
        description=(
            "`stop`: the model finished; `length`: cut at the model's or the service's length limit; "
            "`stopped`: POST /chat/stop ended it, and `content` is the part written until then "
            "(stored with `stopped: true`)."
        )
    )
    usage: TokenUsage | None = Field(
        None, description="Tokens of this turn, when the provider reported them (absent otherwise)."
    )
