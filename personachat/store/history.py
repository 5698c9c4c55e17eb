"""The conversation store: sessions and their messages in Redis.

This module alone knows how history is laid out, how long it lives and how it is trimmed.
It guarantees:
- a turn is committed in one MULTI/EXEC transaction: the user message and the answer are
  appended together (never one without the other, never twice), the list is trimmed to
  HISTORY_MAX, and every key of the session gets its TTL refreshed;
- admission of a turn is one atomic script: the session must exist and belong to the user,
  no other turn may be running in it, and the user's rate and concurrency limits hold;
- a session id that is missing and one that belongs to someone else look the same (404).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from config import Settings
from personachat.errors import RateLimited, SessionNotFound, TurnInProgress
from personachat.store.client import Pipeline, Redis, translate_redis_errors
from personachat.store.keys import KeySpace, is_session_id

TITLE_CHARS = 60
LIST_LIMIT = 500

# KEYS: session hash, lock, running zset, rate counter, messages list
# ARGV: turn id, now ms, lock ttl ms, max concurrent, rate limit, rate window ms, window size
_ADMIT_TURN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'busy'} end
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return {'concurrency'} end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= limit then return {'rate', redis.call('PTTL', KEYS[4])} end
  if redis.call('INCR', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
local window = {}
if tonumber(ARGV[7]) > 0 then window = redis.call('LRANGE', KEYS[5], -tonumber(ARGV[7]), -1) end
return {'ok', redis.call('HGET', KEYS[1], 'role'), window}
"""

# KEYS: lock, running zset. ARGV: turn id. Releases the lock only if this turn still holds it.
_RELEASE_TURN = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_from_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class SessionInfo:
    session_id: str
    role: str
    title: str
    created_at: str
    last_activity: str
    messages: int
    running_turn_id: str | None = None


@dataclass
class Admission:
    """A turn admitted by `HistoryStore.admit_turn`: the session's role and prompt window."""

    turn_id: str
    session_role: str
    window: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    history_window: int
    history_max: int
    history_ttl_seconds: int
    lock_ttl_ms: int
    max_concurrent_turns: int
    rate_limit_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            history_window=settings.history_window,
            history_max=settings.history_max,
            history_ttl_seconds=settings.history_ttl_seconds,
            # A crashed instance's turn keeps its session locked no longer than the turn timeout.
            lock_ttl_ms=int(settings.turn_timeout_seconds * 1000),
            max_concurrent_turns=settings.max_concurrent_turns_per_user,
            rate_limit_per_minute=settings.rate_limit_per_minute,
        )


class HistoryStore:
    def __init__(self, redis: Redis, keys: KeySpace, limits: Limits) -> None:
        self._redis = redis
        self._keys = keys
        self._limits = limits
        self._admit = redis.register_script(_ADMIT_TURN)

    # -- sessions ---------------------------------------------------------------------

    @translate_redis_errors
    async def create_session(self, user: str, role: str, title: str | None) -> SessionInfo:
        session_id = secrets.token_hex(16)  # 128 random bits
        now_ms = time.time() * 1000
        created = _iso_from_ms(now_ms)
        fields = {"role": role, "created_at": created, "last_activity": created}
        if title:
            fields["title"] = title
        ttl = self._limits.history_ttl_seconds
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.session(user, session_id), mapping=fields)
            pipe.expire(self._keys.session(user, session_id), ttl)
            pipe.zadd(self._keys.sessions(user), {session_id: now_ms})
            pipe.expire(self._keys.sessions(user), ttl)
            await pipe.execute()
        return SessionInfo(session_id, role, title or "", created, created, 0)

    @translate_redis_errors
    async def get_session(self, user: str, session_id: str) -> SessionInfo:
        if not is_session_id(session_id):
            raise SessionNotFound()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.session(user, session_id))
            pipe.get(self._keys.lock(user, session_id))
            pipe.llen(self._keys.messages(user, session_id))
            meta, lock, count = await pipe.execute()
        if not meta:
            raise SessionNotFound()
        return _session_info(session_id, meta, lock, count)

    @translate_redis_errors
    async def list_sessions(self, user: str) -> list[SessionInfo]:
        """The user's sessions, newest activity first; index entries whose session expired are pruned."""
        ids = [sid.decode() for sid in await self._redis.zrevrange(self._keys.sessions(user), 0, LIST_LIMIT - 1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(self._keys.session(user, sid))
                pipe.get(self._keys.lock(user, sid))
                pipe.llen(self._keys.messages(user, sid))
            replies = await pipe.execute()
        sessions, gone = [], []
        for sid, meta, lock, count in zip(ids, replies[::3], replies[1::3], replies[2::3], strict=True):
            if meta:
                sessions.append(_session_info(sid, meta, lock, count))
            else:
                gone.append(sid)
        if gone:
            await self._redis.zrem(self._keys.sessions(user), *gone)
        return sessions

    @translate_redis_errors
    async def messages(self, user: str, session_id: str) -> tuple[SessionInfo, list[dict[str, Any]]]:
        """The session and all its stored messages, oldest first."""
        if not is_session_id(session_id):
            raise SessionNotFound()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.session(user, session_id))
            pipe.get(self._keys.lock(user, session_id))
            pipe.lrange(self._keys.messages(user, session_id), 0, -1)
            meta, lock, raw = await pipe.execute()
        if not meta:
            raise SessionNotFound()
        return _session_info(session_id, meta, lock, len(raw)), [orjson.loads(item) for item in raw]

    @translate_redis_errors
    async def clear(self, user: str, session_id: str) -> SessionInfo:
        """Delete the session's messages; the session itself stays."""
        session = await self._idle_session(user, session_id)
        await self._redis.delete(self._keys.messages(user, session_id))
        session.messages = 0
        return session

    @translate_redis_errors
    async def delete(self, user: str, session_id: str) -> None:
        """Delete the session and its messages."""
        await self._idle_session(user, session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.session(user, session_id), self._keys.messages(user, session_id))
            pipe.zrem(self._keys.sessions(user), session_id)
            await pipe.execute()

    async def _idle_session(self, user: str, session_id: str) -> SessionInfo:
        session = await self.get_session(user, session_id)
        if session.running_turn_id is not None:
            raise TurnInProgress("An answer is being generated in this session; stop it first.")
        return session

    # -- turns ------------------------------------------------------------------------

    @translate_redis_errors
    async def admit_turn(self, user: str, session_id: str) -> Admission:
        """Atomically take the session's turn lock and read the prompt window.

        Raises SessionNotFound, TurnInProgress (409) or RateLimited (429).
        """
        if not is_session_id(session_id):
            raise SessionNotFound()
        turn_id = secrets.token_hex(8)
        limits = self._limits
        keys = [
            self._keys.session(user, session_id),
            self._keys.lock(user, session_id),
            self._keys.running(user),
            self._keys.rate(user),
            self._keys.messages(user, session_id),
        ]
        args = [
            turn_id,
            int(time.time() * 1000),
            limits.lock_ttl_ms,
            limits.max_concurrent_turns,
            limits.rate_limit_per_minute,
            60_000,
            limits.history_window,
        ]
        reply = await self._admit(keys=keys, args=args)
        status = reply[0].decode()
        if status == "missing":
            raise SessionNotFound()
        if status == "busy":
            raise TurnInProgress()
        if status == "concurrency":
            raise RateLimited(
                f"At most {limits.max_concurrent_turns} answers can be generated at once per user.",
                retry_after=1,
            )
        if status == "rate":
            raise RateLimited(
                f"At most {limits.rate_limit_per_minute} messages per minute per user.",
                retry_after=-(-int(reply[1]) // 1000),
            )
        role = reply[1].decode() if reply[1] else ""
        return Admission(turn_id, role, [_prompt_message(orjson.loads(item)) for item in reply[2]])

    def queue_append_turn(
        self, pipe: Pipeline, user: str, session_id: str, messages: list[dict[str, Any]], role: str, title: str
    ) -> None:
        """Queue, on a MULTI pipeline, the commands that store a finished turn's messages."""
        ttl = self._limits.history_ttl_seconds
        now_ms = time.time() * 1000
        session_key, messages_key = self._keys.session(user, session_id), self._keys.messages(user, session_id)
        pipe.rpush(messages_key, *[orjson.dumps(message) for message in messages])
        pipe.ltrim(messages_key, -self._limits.history_max, -1)
        pipe.expire(messages_key, ttl)
        pipe.hset(session_key, mapping={"role": role, "last_activity": _iso_from_ms(now_ms)})
        pipe.hsetnx(session_key, "title", title[:TITLE_CHARS])
        pipe.hsetnx(session_key, "created_at", _iso_from_ms(now_ms))  # if Redis lost the session
        pipe.expire(session_key, ttl)
        pipe.zadd(self._keys.sessions(user), {session_id: now_ms})
        pipe.expire(self._keys.sessions(user), ttl)

    def queue_release_turn(self, pipe: Pipeline, user: str, session_id: str, turn_id: str) -> None:
        """Queue the release of the turn's lock (only if this turn still holds it)."""
        # EVAL, not EVALSHA: inside MULTI a missing script (after a Redis restart) cannot be reloaded.
        pipe.eval(_RELEASE_TURN, 2, self._keys.lock(user, session_id), self._keys.running(user), turn_id)


def _prompt_message(message: dict[str, Any]) -> dict[str, Any]:
    return {"role": message["role"], "content": message["content"]}


def _session_info(session_id: str, meta: dict[bytes, bytes], lock: bytes | None, count: int) -> SessionInfo:
    text = {key.decode(): value.decode() for key, value in meta.items()}
    return SessionInfo(
        session_id=session_id,
        role=text.get("role", ""),
        title=text.get("title", ""),
        created_at=text.get("created_at") or text.get("last_activity", ""),  # a hash from before HSETNX
        last_activity=text.get("last_activity", ""),
        messages=count,
        running_turn_id=lock.decode() if lock else None,
    )
