"""The frames a client sends over GET /chat/ws, validated like the HTTP bodies they mirror.

`message` is POST /chat/stream's body with a `type`; `stop` names the session whose answer to
stop (POST /chat/stop); `resume` names a session and the last event id the client got (the
stream's Last-Event-ID). Unknown fields are refused, as in the HTTP bodies.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from personachat.errors import InvalidRequest
from personachat.web.schemas import StreamRequest


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(max_length=100)


class SendFrame(StreamRequest):
    type: Literal["message"]
    message: str


class StopFrame(_Frame):
    type: Literal["stop"]


class ResumeFrame(_Frame):
    type: Literal["resume"]
    last_event_id: str = Field(max_length=100)


ClientFrame = Annotated[SendFrame | StopFrame | ResumeFrame, Field(discriminator="type")]
_FRAME: TypeAdapter[SendFrame | StopFrame | ResumeFrame] = TypeAdapter(ClientFrame)


def parse_frame(data: str | bytes) -> SendFrame | StopFrame | ResumeFrame:
    """The client's frame, or InvalidRequest (422) naming what is wrong with it."""
    try:
        return _FRAME.validate_json(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if error["type"] == "json_invalid":
            raise InvalidRequest("A frame must be a JSON object.") from None
        if error["type"] in ("union_tag_invalid", "union_tag_not_found", "model_attributes_type"):
            raise InvalidRequest("A frame is a JSON object whose 'type' is 'message', 'stop' or 'resume'.") from None
        where = ".".join(str(part) for part in error["loc"][1:]) or "frame"
        raise InvalidRequest(f"{where}: {error['msg']}") from None
