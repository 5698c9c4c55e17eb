"""The service's errors: one small family, each with an HTTP status and a stable `code`.

    ChatError
    ├── InvalidRequest (422)            bad or missing input the schema could not catch
    │   ├── EmptyMessage (422)
    │   └── InvalidCard (422)           a character card that cannot be read (names the problem)
    ├── MessageTooLong (413)
    ├── UnknownRole (400)               lists the valid keys
    ├── NotAuthenticated (401)          no identity, and anonymous identities are off
    ├── InvalidApiKey (401)             a wrong Bearer key; never a fall-back to the cookie
    ├── SessionNotFound (404)           missing and foreign sessions look the same
    ├── TurnNotFound (404)              a Last-Event-ID that names no turn of this session
    ├── TurnInProgress (409)            one turn at a time per session
    ├── SocketBusy (409)                one relayed turn at a time per WebSocket
    ├── RateLimited (429)               with Retry-After
    ├── TooManySockets (429)            MAX_SOCKETS_PER_USER open WebSockets
    ├── ReadOnlyPersona (403)           a built-in or file persona cannot be changed
    ├── PersonaNotFound (404)           missing and other users' personas look the same
    ├── TooManyPersonas (409)           MAX_PERSONAS_PER_USER reached
    ├── StoreUnavailable (503)          Redis unreachable
    ├── ServerShutdown (503)            the server is shutting down: new turns are refused
    └── UpstreamError                   the model failed; only ever sent as an `error` event
        └── UpstreamTimeout

Foreign exceptions (redis, openai, httpx) are translated where they are raised, with
`raise ... from exc`, so routes and the single exception handler only see this family.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error the service reports to a client."""

    status_code: int = 500
    code: str = "internal_error"
    message: str = "Something went wrong on our side."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.message
        self.headers = headers or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.message}


class InvalidRequest(ChatError):
    status_code = 422
    code = "invalid_request"
    message = "The request is not valid."


class EmptyMessage(InvalidRequest):
    code = "empty_message"
    message = "The message is empty."


class MessageTooLong(ChatError):
    status_code = 413
    code = "message_too_long"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The message is longer than {limit} characters.")


class UnknownRole(ChatError):
    status_code = 400
    code = "unknown_role"

    def __init__(self, role: str, valid: list[str]) -> None:
        self.valid = valid
        super().__init__(f"Unknown role {role!r}. Valid roles: {', '.join(valid)}.")

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "valid_roles": ", ".join(self.valid)}


class NotAuthenticated(ChatError):
    status_code = 401
    code = "not_authenticated"
    message = "Send an API key as 'Authorization: Bearer <key>'."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class InvalidApiKey(NotAuthenticated):
    code = "invalid_api_key"
    message = "The API key is not valid."


class SessionNotFound(ChatError):
    status_code = 404
    code = "session_not_found"
    message = "No such session."


class TurnNotFound(ChatError):
    status_code = 404
    code = "turn_not_found"
    message = "No such turn in this session (it may have expired)."


class TurnInProgress(ChatError):
    status_code = 409
    code = "turn_in_progress"
    message = "An answer is still being generated in this session; wait for it or stop it."


class SocketBusy(ChatError):
    status_code = 409
    code = "socket_busy"
    message = "This socket is relaying an answer; wait for its end."


class RateLimited(ChatError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class TooManySockets(ChatError):
    status_code = 429
    code = "too_many_sockets"
    message = "Too many WebSockets are open for this user; close one first (MAX_SOCKETS_PER_USER)."


class StoreUnavailable(ChatError):
    status_code = 503
    code = "store_unavailable"
    message = "The conversation store (Redis) is unreachable; try again shortly."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "2"})


class ServerShutdown(ChatError):
    """Refuses a turn while the server shuts down, and ends the running ones (as an event)."""

    status_code = 503
    code = "server_shutdown"
    message = "The server is restarting; send your message again in a moment."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "2"})


class UpstreamError(ChatError):
    """The model failed during a turn. `code` is one of the stable stream error codes."""

    status_code = 502
    code = "upstream_error"
    message = "The model returned an error."

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class UpstreamTimeout(UpstreamError):
    def __init__(self, seconds: float) -> None:
        super().__init__("upstream_timeout", f"The model sent nothing for {seconds:g} seconds.")


# -- personas of one's own ---------------------------------------------------------------


class ReadOnlyPersona(ChatError):
    status_code = 403
    code = "read_only"
    message = "Built-in and file personas cannot be changed; create a persona of your own."


class PersonaNotFound(ChatError):
    status_code = 404
    code = "persona_not_found"
    message = "No such persona of yours."


class TooManyPersonas(ChatError):
    status_code = 409
    code = "too_many_personas"

    def __init__(self, limit: int) -> None:
        super().__init__(f"You have {limit} personas, the most one may keep; delete one first.")


class InvalidCard(InvalidRequest):
    code = "invalid_card"
    message = "The character card cannot be read."
