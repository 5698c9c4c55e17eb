"""GET /chat/ws: the chat over one WebSocket, for clients that would rather hold one socket
than open a stream per message.

It is one more reader and writer of the same turns as the HTTP routes: a `message` frame is
`turns.start` (the same admission, limits and errors as POST /chat/stream), `stop` is
`turns.stop`, `resume` is `readers.open`; the turn's events are relayed as they come, each
with its `id` and `session_id` added. So:

- the identity is HTTP's (the cookie, or `Authorization: Bearer` for scripts); a wrong key is
  refused at the handshake with 401 JSON, and an upgrade from another site's page with 403
  `cross_site` (`web.middleware`);
- a problem known before a turn starts is one `error` frame with the status HTTP would have
  answered, and the socket stays open for the next frame;
- one turn is relayed at a time: a `message` or `resume` while one is relayed gets 409
  `socket_busy` (the turns of several sessions go one after another; a `stop` is taken at
  any time);
- the socket closing, or the client reading too slowly, ends only the relay, never the turn:
  it runs to its end and is stored, and a `resume` (on this socket or another) picks it up;
- a user may hold MAX_SOCKETS_PER_USER open sockets per process (429 `too_many_sockets`
  at the handshake beyond);
- what waits for a slow client is the relay's current batch: the server cuts off a client
  that reads nothing for SEND_TIMEOUT_SECONDS (`web.server.WebSocketProtocol`), and an
  answer is at most MAX_ANSWER_CHARS long.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from personachat.errors import ChatError, SocketBusy, TooManySockets
from personachat.readers import Events, close_reader
from personachat.store.turnlog import is_terminal
from personachat.turns import error_payload
from personachat.web.deps import Services
from personachat.web.errors import error_response
from personachat.web.socket_schemas import ResumeFrame, SendFrame, StopFrame, parse_frame

router = APIRouter()


@router.websocket("/chat/ws")
async def chat_socket(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    open_sockets = services.open_sockets
    try:
        user = (await services.identity.resolve(websocket)).user_id
        if open_sockets[user] >= services.settings.max_sockets_per_user:
            raise TooManySockets()
    except ChatError as exc:  # a wrong API key, anonymous use off, too many new identities or sockets
        await websocket.send_denial_response(error_response(exc.status_code, exc.code, exc.message, exc.headers))
        return
    open_sockets[user] += 1
    try:
        await websocket.accept()
        await ChatSocket(websocket, user, services).serve()
    finally:
        open_sockets[user] -= 1
        if open_sockets[user] <= 0:
            del open_sockets[user]


class ChatSocket:
    """One client's socket: its frames in, one turn's events out at a time."""

    def __init__(self, websocket: WebSocket, user: str, services: Services) -> None:
        self._ws = websocket
        self._user = user
        self._turns = services.turns
        self._readers = services.readers
        self._relays: set[asyncio.Task[None]] = set()  # the current one, and any still closing
        self._relaying: str | None = None  # the session whose events are being sent

    async def serve(self) -> None:
        try:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text: str | None = message.get("text")
                await self._handle(text if text is not None else message.get("bytes") or b"")
        except WebSocketDisconnect:
            return  # an error frame could not be sent: the client is gone
        finally:
            for relay in self._relays:
                relay.cancel()  # the relay only: the turn goes on, and is stored
            await asyncio.gather(*self._relays, return_exceptions=True)

    async def _handle(self, data: str | bytes) -> None:
        session_id: str | None = None
        try:
            frame = parse_frame(data)
            session_id = frame.session_id
            if isinstance(frame, StopFrame):
                turn_id, stopped = await self._turns.stop(self._user, frame.session_id)
                await self._send_json(
                    {"type": "stopped", "session_id": session_id, "turn_id": turn_id, "stopped": stopped}
                )
                return
            if self._relaying is not None:
                raise SocketBusy(f"This socket is relaying an answer of session {self._relaying}; wait for its end.")
            events = await self._open(frame)
        except ChatError as exc:
            await self._send_error(exc, session_id)
            return
        if events is not None:  # None: a resume after the turn's final event, nothing more comes
            self._relaying = frame.session_id
            relay = asyncio.create_task(self._send_events(frame.session_id, events))
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)

    async def _open(self, frame: SendFrame | ResumeFrame) -> Events | None:
        if isinstance(frame, ResumeFrame):
            return await self._readers.open(self._user, frame.session_id, frame.last_event_id)
        # A new turn, live; or the turn a repeated client_message_id started, from its start.
        return await self._readers.of(self._user, await self._turns.start(frame.turn_request(self._user)))

    async def _send_events(self, session_id: str, events: Events) -> None:
        # Each payload is a JSON object written by the service with "type" first: the id, and
        # the session unless the event names it already (`start`, `end`: their second key),
        # go in front of it, with no parse and no re-encoding.
        session = b',"session_id":' + orjson.dumps(session_id) + b","
        done = False
        try:
            async for batch in events:
                for event_id, payload in batch:
                    if is_terminal(payload):
                        # Free before the client can read it and send again.
                        done, self._relaying = True, None
                    named = b'","session_id":' in payload[:32]  # (a string's quotes are escaped)
                    frame = b'{"id":"' + event_id + (b'",' if named else b'"' + session) + payload[1:]
                    await self._ws.send({"type": "websocket.send", "text": frame.decode()})
        except (WebSocketDisconnect, OSError):
            pass  # the client went away (or was cut off): the turn goes on without this relay
        finally:
            if not done:  # (after its final event, the socket may be relaying the next turn)
                self._relaying = None
            await close_reader(events)

    async def _send_error(self, error: ChatError, session_id: str | None) -> None:
        frame = {**error_payload(error), "status": error.status_code, "session_id": session_id}
        retry_after = error.headers.get("Retry-After", "")
        if retry_after.isdigit():
            frame["retry_after"] = int(retry_after)
        await self._send_json(frame)

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self._ws.send({"type": "websocket.send", "text": orjson.dumps(frame).decode()})
