"""Parameters and error responses shared by the routes, as they appear in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query

from personachat.web.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}
# An event id this service sends: `<turn id>:<n>` (anything else is 422).
EVENT_ID_PATTERN = r"^[0-9a-f]{16}:[0-9]{1,18}$"

SessionIdQuery = Annotated[str, Query(description="The session id from POST /chat/start.")]
LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Resume a turn after this event (EventSource sends it).",
        json_schema_extra={"format": "event-id", "pattern": EVENT_ID_PATTERN, "examples": ["0123456789abcdef:3"]},
    ),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(
        description="Same as the Last-Event-ID header, for clients that cannot set headers.",
        json_schema_extra={"format": "event-id", "pattern": EVENT_ID_PATTERN, "examples": ["0123456789abcdef:3"]},
    ),
]
