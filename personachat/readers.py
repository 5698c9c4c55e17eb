"""Reading a turn's events: what an SSE response streams, live or resumed.

A response never runs a turn; it reads one (`turns` runs them). A turn running in this
process is followed from memory (`follow`); any other turn, or a resume after its end, is
read from its Redis stream (`TurnReaders.open`), so a client reconnecting with
`Last-Event-ID`, to this instance or another, gets exactly the events after that id, once.

Guarantees:
- every stream ends with the turn's final event (`end` or `error`), or with an `error`
  event of its own: `store_unavailable` when Redis cannot be read, `server_shutdown`, or
  `turn_lost` when the turn's lease ran out without a final event (its process died), which
  the reader then also writes to the stream as the turn's final event;
- the ids a reader sends strictly increase: an event at or before the reader's position
  is never sent;
- a resume names a turn of the caller's own session, or gets 404 like any foreign id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from personachat.errors import ChatError, InvalidRequest, ServerShutdown, StoreUnavailable, TurnNotFound
from personachat.store.client import BLOCK_MS
from personachat.store.history import HistoryStore
from personachat.store.keys import is_turn_id
from personachat.store.turnlog import TurnLog, is_terminal
from personachat.turns import LOST_PAYLOAD, Replay, TurnLost, TurnRun, TurnService, error_payload

Event = tuple[bytes, bytes]
"""One event of a turn: its id (`<turn_id>:<seq>`) and its JSON payload."""

Events = AsyncIterator[list[Event]]
"""What a reader yields: the events that are in since its last batch, in order (a slow
client gets what piled up as one batch)."""


def sse_frames(events: Events) -> AsyncIterator[bytes]:
    """A reader's batches as SSE frames, one write per batch."""
    if isinstance(events, Following):
        return events.frames()  # framed straight from the turn's memory
    return _framed(events)


async def _framed(events: Events) -> AsyncIterator[bytes]:
    async for batch in events:
        yield b"".join(b"id: " + event_id + b"\r\ndata: " + payload + b"\r\n\r\n" for event_id, payload in batch)


async def close_reader(reader: AsyncIterator[Any]) -> None:
    """Close a reader (or what is made of one) now, not whenever the garbage collector comes:
    a generator's `aclose`; a live turn's reader holds nothing. The reader of a one-off answer
    stops that answer when it is closed (its client went away)."""
    close = getattr(reader, "aclose", None)
    if close is not None:
        await close()


def parse_event_id(value: str) -> tuple[str, int]:
    turn_id, _, seq = value.strip().partition(":")
    # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses (a 500).
    if not is_turn_id(turn_id) or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        raise InvalidRequest("Last-Event-ID must be an event id this service sent, like '<turn>:<n>'.")
    return turn_id, int(seq)


def error_event(prefix: bytes, seq: int, error: ChatError) -> list[Event]:
    return [(prefix + str(seq).encode(), orjson.dumps(error_payload(error)))]


class Following:
    """The events of a turn running here, after `after`; ends with its final event.

    An `Events` iterator like any reader; an SSE response reads it through `frames()`, which
    frames the turn's payloads where they are, one generator between the turn and the
    socket (the relay's path for every chunk of a live answer)."""

    def __init__(self, run: TurnRun, after: int = 0) -> None:
        self._run = run
        self._position = after

    def __aiter__(self) -> Following:
        return self

    async def __anext__(self) -> list[Event]:
        run = self._run
        while True:
            position, count = self._position, len(run.payloads)
            if position < count:
                self._position = count
                return [(run.event_id(seq), run.payloads[seq - 1]) for seq in range(position + 1, count + 1)]
            if run.finished:
                raise StopAsyncIteration
            await run.changed()

    async def frames(self) -> AsyncIterator[bytes]:
        run = self._run
        prefix = run.turn_id.encode() + b":"
        while True:
            position, count = self._position, len(run.payloads)
            if position < count:
                self._position = count
                payloads = run.payloads
                yield b"".join(
                    [
                        b"id: %s%d\r\ndata: %s\r\n\r\n" % (prefix, seq + 1, payloads[seq])
                        for seq in range(position, count)
                    ]
                )
            elif run.finished:
                return
            else:
                await run.changed()


def follow(run: TurnRun, after: int = 0) -> Following:
    """The events of a turn running here, after `after`; ends with its final event."""
    return Following(run, after)


async def _stopping_when_left(run: TurnRun) -> Events:
    try:
        async for batch in follow(run):
            yield batch
    finally:
        run.stop.set()  # after its end, a stop changes nothing


class TurnReaders:
    """Resumes a turn of the caller's session after a given event: from memory when the turn
    runs in this process, else from its Redis stream."""

    def __init__(self, turns: TurnService, store: HistoryStore, log: TurnLog) -> None:
        self._turns = turns
        self._store = store
        self._log = log

    async def of(self, user: str, started: TurnRun | Replay) -> Events | None:
        """A reader of what `TurnService.start` answered: the new turn, live, or the turn a
        repeated send started, from its start (None: it ended before anything could be read,
        which cannot happen for a turn that has a start event). A one-off answer
        (`TurnService.start_one_off`) has this one reader: when it leaves before the end, the
        answer is stopped, since nothing would store it."""
        if isinstance(started, TurnRun):
            return follow(started) if started.stored else _stopping_when_left(started)
        return await self.open(user, started.session_id, f"{started.turn_id}:0")

    async def open(self, user: str, session_id: str, last_event_id: str) -> Events | None:
        """A reader resuming after `last_event_id`; None when that was the turn's last event."""
        turn_id, after = parse_event_id(last_event_id)
        await self._store.get_session(user, session_id)  # 404 for a missing or foreign session
        run = self._turns.local_run(turn_id)
        if run is not None and (run.user, run.session_id) == (user, session_id):
            return follow(run, after)
        tail = await self._log.tail(user, session_id, turn_id)
        if tail is None:
            raise TurnNotFound()
        if tail.ended and after >= tail.last_seq:
            return None
        return self._read_stored(user, session_id, turn_id, after)

    async def _read_stored(self, user: str, session_id: str, turn_id: str, after: int) -> Events:
        """The events of a turn from its Redis stream (a turn of another instance, or finished)."""
        prefix = turn_id.encode() + b":"
        position = after
        block: int | None = BLOCK_MS
        marked_lost = False
        while True:
            try:
                events = await self._log.read_after(user, session_id, turn_id, position, block)
            except StoreUnavailable as exc:
                yield error_event(prefix, position + 1, exc)
                return
            batch: list[Event] = []
            for seq, payload in events:
                if seq <= position:  # never twice, never backwards, whatever the store holds
                    continue
                batch.append((prefix + str(seq).encode(), payload))
                position = seq
                if is_terminal(payload):
                    break
            if batch:
                yield batch
                if is_terminal(batch[-1][1]):
                    return
            if events:
                block = BLOCK_MS
            elif self._turns.closing:
                yield error_event(prefix, position + 1, ServerShutdown())
                return
            elif block is None and not marked_lost:
                # The lease is gone and a last look found no final event: the turn's process
                # died. Write `turn_lost` as its final event (unless its owner just wrote one),
                # so every reader of it, here or elsewhere, ends the same way; then read it.
                marked_lost = True
                try:
                    status = await self._store.end_lost_turn(user, session_id, turn_id, LOST_PAYLOAD, force=False)
                except StoreUnavailable as exc:
                    yield error_event(prefix, position + 1, exc)
                    return
                if status == "running":  # it holds its lease again: keep following
                    block, marked_lost = BLOCK_MS, False
                elif status == "gone":
                    yield error_event(prefix, position + 1, TurnLost())
                    return
            elif block is None:
                yield error_event(prefix, position + 1, TurnLost())
                return
            elif not await self._still_running(user, session_id, turn_id):
                # The final event and the lease's release are written together, but the final
                # event may have landed just after the blocking read returned: look once more.
                block = None

    async def _still_running(self, user: str, session_id: str, turn_id: str) -> bool:
        try:
            session = await self._store.get_session(user, session_id)
        except StoreUnavailable:
            return True  # unknown, not gone: look again (a lasting outage fails the next read)
        except ChatError:
            return False
        return session.running_turn_id == turn_id


# Error codes of a turn's final `error` event that say the model (or the turn's time) failed,
# and the HTTP status a whole-answer client gets for each; any other code keeps its own.
TIMEOUT_CODES = frozenset({"upstream_timeout", "turn_timeout"})


@dataclass
class TurnResult:
    """A turn read to its end, for clients that want the whole answer at once."""

    start: dict[str, Any]
    content: str
    end: dict[str, Any] | None  # the `end` event; None when the turn ended with `error`
    error: dict[str, Any] | None  # the `error` event (`code`, `content`)

    @property
    def status_code(self) -> int:
        """200; or what HTTP says of a failed turn: 504 for a timeout, 502 for another model
        failure, 503 for the store or a shutdown."""
        if self.error is None:
            return 200
        code = self.error.get("code", "")
        if code in TIMEOUT_CODES:
            return 504
        if code in ("store_unavailable", "server_shutdown"):
            return 503
        return 502


async def collect(events: Events) -> TurnResult:
    """Read a turn's events to its final one and fold them into one result."""
    start: dict[str, Any] = {}
    parts: list[str] = []
    async for batch in events:
        for _, raw in batch:
            payload = orjson.loads(raw)
            kind = payload.get("type")
            if kind == "chunk":
                parts.append(payload.get("content", ""))
            elif kind == "start":
                start = payload
            elif kind == "end":
                return TurnResult(start, "".join(parts), payload, None)
            elif kind == "error":
                return TurnResult(start, "".join(parts), None, payload)
    return TurnResult(start, "".join(parts), None, {"code": "turn_lost", "content": TurnLost.message})
