"""A turn's events in Redis: a capped, expiring Redis Stream per turn, and stop requests.

An SSE response is only a reader of a turn; the turn writes its events here as they come,
so that any instance can replay them to a reconnecting client (`Last-Event-ID`) and follow
the live ones. Events are written in batches: one stream entry holds the events of one
flush, `s` being the sequence number of its first event and `d` their JSON payloads joined
by newlines (JSON from orjson never contains a raw newline). The entry id is `0-<last seq>`,
so `XREAD` after `0-<n>` returns every entry that holds an event after n.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from personachat.store.client import UNREACHABLE, Redis, translate_redis_errors
from personachat.store.keys import KeySpace, is_turn_id

TERMINAL_TYPES = (b'"type":"end"', b'"type":"error"')
STOP_TTL_MS = 60_000
STOP_TOKEN_TTL_MS = 86_400_000

# The seq of the final event of a turn ended without its owner. Its dead process may have sent
# its readers events that never reached the stream, so the final event is numbered after any
# event a turn can have: every reader, whatever it saw, gets it once, after what it saw.
LOST_SEQ = 1_000_000_000

# Lua shared by the scripts that write a turn's stream: the seq of its last stored event (0
# for none) and the `f` field of its last entry, which only a final entry has: "end" when the
# turn's owner ended it (history.py's commit), "lost" when it was ended for a dead owner.
TAIL_LUA = f"""
local LOST_SEQ = {LOST_SEQ}
local function stream_tail(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not last then return 0, nil end
  local final = nil
  for i = 1, #last[2], 2 do
    if last[2][i] == 'f' then final = last[2][i + 1] end
  end
  return tonumber(string.match(last[1], '%-(%d+)$')), final
end
"""

# KEYS: turn stream, lock, running zset. ARGV: turn id, first seq, now ms, lease ms, stream
# ttl s, then the payloads. Writes only while the turn holds its lease, and renews it.
# Events already stored (a flush applied whose reply was lost, then sent again with more
# events) are skipped, so every seq is stored once and entry ids keep increasing.
_APPEND = (
    TAIL_LUA
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local stored, final = stream_tail(KEYS[1])
if final then return 0 end
local lease = tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[2], lease)
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + lease, ARGV[1])
if redis.call('PTTL', KEYS[3]) < lease then redis.call('PEXPIRE', KEYS[3], lease) end
local first = tonumber(ARGV[2])
local last = first + #ARGV - 6
if stored >= last then return 1 end
local start = math.max(first, stored + 1)
local parts = {}
for i = start - first + 6, #ARGV do parts[#parts + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '0-' .. last, 's', start, 'd', table.concat(parts, '\\n'))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
)


def _nothing() -> None:
    pass


def is_terminal(payload: bytes) -> bool:
    # Payloads are written by this service with "type" as their first key.
    return payload.startswith(TERMINAL_TYPES, 1)


@dataclass(frozen=True)
class Append:
    """One turn's part of `TurnLog.append_many`: its events numbered from `first_seq` (none:
    the write only renews the lease)."""

    user: str
    session_id: str
    turn_id: str
    first_seq: int
    payloads: Sequence[bytes]


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
        self._append = redis.register_script(_APPEND)

    @translate_redis_errors
    async def append(
        self, user: str, session_id: str, turn_id: str, first_seq: int, payloads: Sequence[bytes], *, lease_ms: int
    ) -> bool:
        """Write events numbered from `first_seq` as one entry and renew the turn's lease.

        Safe to repeat, and to repeat with more events: what is stored already is skipped.
        False when the turn no longer holds its lease (nothing written): it must end.
        """
        keys = [self._keys.turn(user, session_id, turn_id), *self._keys_of_lease(user, session_id)]
        args = [turn_id, first_seq, _now_ms(), lease_ms, self._ttl, *payloads]
        return bool(await self._append(keys=keys, args=args))

    @translate_redis_errors
    async def append_many(self, appends: Sequence[Append], *, lease_ms: int) -> list[bool]:
        """`append` for several turns in one round trip (a pipeline of the same script): for
        each, whether it still holds its lease. An append with no events renews the lease (and,
        like any append, finds a turn that was ended for it: False)."""
        if not appends:
            return []
        now = _now_ms()
        calls = [
            (
                [self._keys.turn(a.user, a.session_id, a.turn_id), *self._keys_of_lease(a.user, a.session_id)],
                [a.turn_id, a.first_seq, now, lease_ms, self._ttl, *a.payloads],
            )
            for a in appends
        ]
        # EVALSHA itself, not the Script object: a pipeline given Script objects asks SCRIPT
        # EXISTS first on every execute, a second round trip each time.
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._append.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # Redis lost its scripts (a restart): load it, again
                keys, args = calls[index]
                replies[index] = await self._append(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply  # the whole batch counts as failed: every turn sends its events again
        return [bool(reply) for reply in replies]

    def _keys_of_lease(self, user: str, session_id: str) -> list[str]:
        return [self._keys.lock(user, session_id), self._keys.running(user)]

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
        """The events after `after_seq`, waiting up to `block_ms` for the first one (None: no
        wait). Their seqs strictly increase: an event is kept only after the last one kept,
        whatever entries overlap."""
        key = self._keys.turn(user, session_id, turn_id)
        client = self._redis if block_ms is None else self._blocking
        reply = await client.xread({key: f"0-{after_seq}"}, block=block_ms)
        events = []
        position = after_seq
        for _key, entries in reply or ():
            for _entry_id, fields in entries:
                first = int(fields[b"s"])
                for offset, payload in enumerate(fields[b"d"].split(b"\n")):
                    if first + offset > position:
                        position = first + offset
                        events.append((position, payload))
        return events

    # -- stop requests ----------------------------------------------------------------

    @translate_redis_errors
    async def request_stop(self, user: str, turn_id: str) -> None:
        """Flag the turn, replace the stop token (watched by every instance's slow poll), and
        publish the turn id, which the turn's own instance hears at once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.stop(user, turn_id), b"1", px=STOP_TTL_MS)
            pipe.set(self._keys.stop_token(), secrets.token_bytes(8), px=STOP_TOKEN_TTL_MS)
            await pipe.execute()
        await self._redis.publish(self._keys.stop_channel(), turn_id)  # a cluster pipeline refuses PUBLISH

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

    async def stop_requests(self, on_subscribed: Callable[[], None] = _nothing) -> AsyncIterator[str]:
        """The turn ids of stop requests as they are published, on a connection of its own.

        Ends with StoreUnavailable when the connection is lost: messages published meanwhile
        are missed, which is what the durable flags and the slow poll are for.
        """
        if isinstance(self._redis, RedisCluster):
            # A cluster broadcasts PUBLISH to every node: listen on any one (its slot map loaded first).
            await _translated(self._redis.initialize())
            pubsub = self._redis.pubsub(node=self._redis.get_default_node())
        else:
            pubsub = self._redis.pubsub()
        try:
            await _translated(pubsub.subscribe(self._keys.stop_channel()))
            on_subscribed()
            while True:
                message = await _translated(pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0))
                if message is None or message.get("type") != "message":
                    continue
                turn_id = message["data"].decode(errors="replace")
                if is_turn_id(turn_id):
                    yield turn_id
        finally:
            with contextlib.suppress(*UNREACHABLE):  # closing a connection already lost
                await pubsub.aclose()


T = TypeVar("T")


@translate_redis_errors
async def _translated(step: Awaitable[T]) -> T:
    return await step


def _now_ms() -> int:
    return int(time.time() * 1000)
