"""A turn's events in Redis: a capped, expiring Redis Stream per turn, and stop requests.

An SSE response is only a reader of a turn; the turn writes its events here as they come,
so that any instance can replay them to a reconnecting client (`Last-Event-ID`) and follow
the live ones. Events are written in batches: one stream entry holds the events of one
flush, `s` being the sequence number of its first event and `d` their JSON payloads joined
by newlines (JSON from orjson never contains a raw newline). The entry id is `0-<last seq>`,
so `XREAD` after `0-<n>` returns every entry that holds an event after n.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import ResponseError

from personachat.store.client import Pipeline, Redis, translate_redis_errors
from personachat.store.keys import KeySpace

TERMINAL_TYPES = (b'"type":"end"', b'"type":"error"')
STOP_TTL_MS = 60_000
STOP_TOKEN_TTL_MS = 86_400_000


def is_terminal(payload: bytes) -> bool:
    # Payloads are written by this service with "type" as their first key.
    return payload.startswith(TERMINAL_TYPES, 1)


@dataclass(frozen=True)
class TurnTail:
    """Where a stored turn stands: its last sequence number and whether it has ended."""

    last_seq: int
    ended: bool


class TurnLog:
    def __init__(self, redis: Redis, keys: KeySpace, ttl_seconds: int, blocking: Redis | None = None) -> None:
        self._redis = redis
        self._blocking = blocking or redis  # XREAD BLOCK runs on its own pool (store.client)
        self._keys = keys
        self._ttl = ttl_seconds

    def queue_append(
        self, pipe: Pipeline, user: str, session_id: str, turn_id: str, first_seq: int, payloads: Sequence[bytes]
    ) -> None:
        """Queue one stream entry holding `payloads`, numbered from `first_seq`."""
        key = self._keys.turn(user, session_id, turn_id)
        last_seq = first_seq + len(payloads) - 1
        pipe.xadd(key, {"s": first_seq, "d": b"\n".join(payloads)}, id=f"0-{last_seq}")
        pipe.expire(key, self._ttl)

    @translate_redis_errors
    async def create(self, user: str, session_id: str, turn_id: str, payload: bytes) -> None:
        """Write a turn's first event, creating its stream with the stream's TTL."""
        async with self._redis.pipeline(transaction=True) as pipe:
            self.queue_append(pipe, user, session_id, turn_id, 1, [payload])
            await pipe.execute()

    @translate_redis_errors
    async def append(self, user: str, session_id: str, turn_id: str, first_seq: int, payloads: Sequence[bytes]) -> None:
        """One XADD, no transaction: the stream already has its TTL (XADD keeps it), and the
        final write refreshes it. A retried write whose entry exists is not an error."""
        key = self._keys.turn(user, session_id, turn_id)
        last_seq = first_seq + len(payloads) - 1
        try:
            await self._redis.xadd(key, {"s": first_seq, "d": b"\n".join(payloads)}, id=f"0-{last_seq}")
        except ResponseError as exc:
            raise_unless_already_written([exc])

    @translate_redis_errors
    async def tail(self, user: str, session_id: str, turn_id: str) -> TurnTail | None:
        """The stored turn's last event, or None when no such turn is stored."""
        entries = await self._redis.xrevrange(self._keys.turn(user, session_id, turn_id), count=1)
        if not entries:
            return None
        entry_id, fields = entries[0]
        last_seq = int(entry_id.split(b"-")[1])
        return TurnTail(last_seq, is_terminal(fields[b"d"].rsplit(b"\n", 1)[-1]))

    @translate_redis_errors
    async def read_after(
        self, user: str, session_id: str, turn_id: str, after_seq: int, block_ms: int | None
    ) -> list[tuple[int, bytes]]:
        """The events after `after_seq`, waiting up to `block_ms` for the first one (None: no wait)."""
        key = self._keys.turn(user, session_id, turn_id)
        client = self._redis if block_ms is None else self._blocking
        reply = await client.xread({key: f"0-{after_seq}"}, block=block_ms)
        events = []
        for _key, entries in reply or ():
            for _entry_id, fields in entries:
                first = int(fields[b"s"])
                for offset, payload in enumerate(fields[b"d"].split(b"\n")):
                    if first + offset > after_seq:
                        events.append((first + offset, payload))
        return events

    @translate_redis_errors
    async def request_stop(self, user: str, turn_id: str) -> None:
        """Flag the turn, then replace the stop token, which every instance watches."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.stop(user, turn_id), b"1", px=STOP_TTL_MS)
            pipe.set(self._keys.stop_token(), secrets.token_bytes(8), px=STOP_TOKEN_TTL_MS)
            await pipe.execute()

    @translate_redis_errors
    async def stop_token(self) -> bytes | None:
        """Changes whenever a stop is requested: instances read this one key, and look at
        their own turns' flags only when it changed. (A random token, not a counter: a Redis
        restart that loses the counter could bring an old value back.)"""
        token: bytes | None = await self._redis.get(self._keys.stop_token())
        return token

    @translate_redis_errors
    async def stop_requested(self, turns: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (user, turn id), whether a stop was requested; one round trip for all."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user, turn_id in turns:
                pipe.exists(self._keys.stop(user, turn_id))
            return [bool(flag) for flag in await pipe.execute()]


def raise_unless_already_written(replies: list[object]) -> None:
    """Raise the first error of a pipeline, except an XADD refused because its id exists.

    A flush retried after a connection drop may find its entry already written; the
    explicit, increasing ids make that visible instead of duplicating the events.
    """
    for reply in replies:
        if isinstance(reply, ResponseError) and "equal or smaller" not in str(reply):
            raise reply
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply
