"""The conversation store: sessions and their messages in Redis.

This module alone knows how history is laid out, how long it lives and how it is trimmed.
It guarantees:
- a turn is committed by one Lua script: the user message and the answer are appended
  together (never one without the other, never twice: running it again, as redis-py's retry
  does after a lost reply, finds the turn's final event and changes nothing), the list is
  trimmed to HISTORY_MAX, every key of the session gets its TTL refreshed, and the lease is
  released; it stores nothing unless the turn still holds its lease and its session exists;
- admission of a turn is one atomic script: the session must exist and belong to the user,
  no other turn may hold its lease, and the user's rate and concurrency limits hold; the
  caller names the turn, so the same admission sent twice is admitted once;
- a turn holds its session by a short lease (TURN_LEASE_SECONDS) that it renews while it
  runs, so a turn whose process died frees its session and concurrency slot within a lease;
- a session is deleted or cleared by one script that refuses while a turn holds the lease;
- a session id that is missing and one that belongs to someone else look the same (404).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from config import Settings
from personachat.errors import RateLimited, SessionNotFound, TurnInProgress, TurnNotFound
from personachat.store.client import UNREACHABLE, Redis, translate_redis_errors
from personachat.store.keys import KeySpace, is_session_id, is_turn_id
from personachat.store.turnlog import TAIL_LUA

TITLE_CHARS = 60
EDITED_TITLE_CHARS = 200  # a title the user types (PATCH) may be longer than one made for them
LIST_LIMIT = 500
COMMIT_ATTEMPTS = 4  # a turn's final commit rides over a short Redis outage (the script is idempotent)

# Lua shared by the admission and the commit: the index of the first message of a turn in a
# session's list (0-based: the number of messages before it), nil when none has it. A stored
# message is orjson's compact JSON, so its own `"turn_id":"<id>"` is the only place where that
# text appears unescaped (quotes inside a message's content are escaped).
FIND_TURN_LUA = """
local function find_turn(key, turn_id)
  local needle = '"turn_id":"' .. turn_id .. '"'
  local items = redis.call('LRANGE', key, 0, -1)
  for i = 1, #items do
    if string.find(items[i], needle, 1, true) then return i - 1 end
  end
  return nil
end
"""

# A turn holds its session through a lease: the lock key (the turn id, expiring after
# TURN_LEASE_SECONDS) and its entry in the user's running-turns zset (scored by the same
# expiry). The running turn renews both; a dead turn's lease simply runs out.
#
# KEYS: session hash, lock, running zset, rate counter, messages list, turn stream, the user's
#       own personas (a hash: the session's persona may be one of them), the send's
#       client-message key (the session hash again when the send has no client_message_id)
# ARGV: turn id, now ms, lease ms, max concurrent, rate limit, rate window ms, window size,
#       stream ttl s, (unused: was the first event's head), chosen role ('' for the session's),
#       default role, then the known roles (the catalog's), then from_turn and
#       client_message_id ('' for none), always the last two.
# Answers {'ok', role, window, messages before the turn, the session's model ('' for none)},
# {'duplicate', turn id} when a send with this client_message_id already started a turn (its
# key lives as long as that turn's stream), {'no_turn'} when from_turn is not a turn of the
# session, or a refusal. With from_turn the window is the messages before that turn's first
# message.
# The turn id is chosen by the caller, so a re-sent admission (a reply lost, the client
# retrying) finds its own lease and answers ok again instead of "busy" (and a turn id whose
# stream exists is never admitted again). The turn's first event is not written here: its
# `start` carries the model and how much of the window fits it, which the caller works out
# from this reply; the turn writes it (lease-checked) before it is announced (turns.py).
_ADMIT_TURN = (
    FIND_TURN_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local from_turn, client_id = ARGV[#ARGV - 1], ARGV[#ARGV]
if client_id ~= '' then
  local prior = redis.call('GET', KEYS[8])
  if prior and prior ~= ARGV[1] then return {'duplicate', prior} end
end
local holder = redis.call('GET', KEYS[2])
local role = ARGV[10]
if role == '' then
  role = redis.call('HGET', KEYS[1], 'role') or ''
  local known = false
  for i = 12, #ARGV - 2 do if ARGV[i] == role then known = true end end
  if not known and role ~= '' and redis.call('HEXISTS', KEYS[7], role) == 1 then known = true end
  if not known then role = ARGV[11] end
end
-- The messages before the turn: all of them, or those before from_turn's first message.
local before = redis.call('LLEN', KEYS[5])
if from_turn ~= '' then
  before = find_turn(KEYS[5], from_turn)
  if before == nil then return {'no_turn'} end
end
local function window()
  local size = math.min(tonumber(ARGV[7]), before)
  if size > 0 then return redis.call('LRANGE', KEYS[5], before - size, before - 1) end
  return {}
end
local model = redis.call('HGET', KEYS[1], 'model') or ''
if holder == ARGV[1] then return {'ok', role, window(), before, model} end
if holder or redis.call('EXISTS', KEYS[6]) == 1 then return {'busy'} end
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
-- Counted without pruning: the first write of this script must be one that Redis refuses when
-- it is out of memory (INCR or SET), so that an OOM Redis refuses the admission whole (503)
-- instead of admitting a turn it cannot store. Expired slots are pruned after the SET.
if redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf') >= tonumber(ARGV[4]) then return {'concurrency'} end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= limit then return {'rate', redis.call('PTTL', KEYS[4])} end
  if redis.call('INCR', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', lease)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[3]) < lease then redis.call('PEXPIRE', KEYS[3], lease) end
if client_id ~= '' then redis.call('SET', KEYS[8], ARGV[1], 'EX', ARGV[8]) end
return {'ok', role, window(), before, model}
"""
)

# KEYS: session hash, messages, user index, lock, running zset, turn stream
# ARGV: turn id, session id, first seq, n payloads, m messages, now ms, now iso, history max,
#       history ttl s, stream ttl s, role, title, lost payload, then the n payloads (the events
#       not yet written, the final one last), then the m messages, then from_turn ('' for none).
# With from_turn, that turn's messages and every later one are cut before the new ones are
# appended, in this same script: a turn that fails (m = 0) or is lost changes nothing. The
# session's title is set from the first message once (`title_source` "first": titles.py may
# then replace it once; a title the user set is "user" and never replaced).
# Safe to run twice: a stream already ending with this turn's final entry means done. Events
# a flush already stored (its reply lost) are skipped, so no seq is written twice. Without the
# lease (it ran out, or a stop ended the turn) or without its session (deleted), nothing is
# added to history: the stream gets the `lost` payload as its final event (numbered LOST_SEQ,
# see turnlog.py), unless it has one.
_COMMIT_TURN = (
    TAIL_LUA
    + FIND_TURN_LUA
    + """
local stored, final = stream_tail(KEYS[6])
if final == 'end' then return {'done'} end
if final then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'lost'}
end
local ours = redis.call('GET', KEYS[4]) == ARGV[1]
if not ours or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[6], '0-' .. LOST_SEQ, 's', LOST_SEQ, 'd', ARGV[13], 'f', 'lost')
  redis.call('EXPIRE', KEYS[6], ARGV[10])
  if ours then redis.call('DEL', KEYS[4]) end
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'lost'}
end
local first, n, m = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local start = math.max(first, stored + 1)
local parts = {}
for i = start - first + 1, n do parts[#parts + 1] = ARGV[13 + i] end
redis.call('XADD', KEYS[6], '0-' .. (first + n - 1), 's', start, 'd', table.concat(parts, '\\n'), 'f', 'end')
redis.call('EXPIRE', KEYS[6], ARGV[10])
if m > 0 then
  local ttl = tonumber(ARGV[9])
  local from_turn = ARGV[14 + n + m] or ''
  if from_turn ~= '' then
    local cut = find_turn(KEYS[2], from_turn)
    if cut == 0 then
      redis.call('DEL', KEYS[2])
      -- The first message was rewritten: a title that was that message follows it.
      if redis.call('HGET', KEYS[1], 'title_source') == 'first' then redis.call('HSET', KEYS[1], 'title', ARGV[12]) end
    elseif cut then redis.call('LTRIM', KEYS[2], 0, cut - 1) end
  end
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 14 + n, 13 + n + m))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('HSET', KEYS[1], 'role', ARGV[11], 'last_activity', ARGV[7])
  if redis.call('HSETNX', KEYS[1], 'title', ARGV[12]) == 1 then redis.call('HSET', KEYS[1], 'title_source', 'first') end
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
return {'ok'}
"""
)

# KEYS: session hash. ARGV: then the fields and values to set, `title_source` among them
# when the title changes. Changes a session that exists, and only that.
_UPDATE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""

# KEYS: session hash. ARGV: "claim", or "set" and the title. An automatic title (titles.py) is
# claimed once per session, while its title is still its first message's ("first" -> "pending"),
# and stored only if nobody set a title meanwhile ("pending" -> "auto").
_AUTO_TITLE = """
local source = redis.call('HGET', KEYS[1], 'title_source')
if ARGV[1] == 'claim' then
  if source ~= 'first' then return 0 end
  redis.call('HSET', KEYS[1], 'title_source', 'pending')
  return 1
end
if source ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'title', ARGV[2], 'title_source', 'auto')
return 1
"""

# KEYS: lock, running zset. ARGV: turn id, now ms, lease ms. Extends the lease only if ours.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local lease = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + lease, ARGV[1])
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
return 1
"""

# KEYS: lock, running zset. ARGV: turn id. Releases the lease only if this turn still holds it.
_RELEASE_TURN = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A one-off answer (no session: the OpenAI-compatible API without X-Session-Id) counts
# against the same per-user limits as a turn, by a slot in the running zset with no lock.
# KEYS: running zset, rate counter. ARGV: turn id, now ms, lease ms, max concurrent, rate
# limit, rate window ms. Answers {'ok'} or a refusal, as the admission does. The first write
# is one an out-of-memory Redis refuses (INCR or ZADD), as in the admission.
_ADMIT_ONE_OFF = """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') >= tonumber(ARGV[4]) then return {'concurrency'} end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= limit then return {'rate', redis.call('PTTL', KEYS[2])} end
  if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return {'ok'}
"""

# KEYS: lock, running zset, turn stream. ARGV: turn id, "1" to end it even while it holds
# its lease (its owner did not answer a stop), the final payload, stream ttl s.
# Ends a turn whose owner is gone: its stream gets a final event (so every reader ends) and
# its lease and slot are released. A turn that has its final event is left as it is.
_END_LOST_TURN = (
    TAIL_LUA
    + """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] and ARGV[2] ~= '1' then return {'running'} end
local stored, final = stream_tail(KEYS[3])
if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
if final then return {'ended'} end
if stored == 0 then return {'gone'} end
redis.call('XADD', KEYS[3], '0-' .. LOST_SEQ, 's', LOST_SEQ, 'd', ARGV[3], 'f', 'lost')
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {'lost'}
"""
)

# KEYS: session hash, messages, lock, user index. ARGV: session id, cutoff ms ("+inf": any
# age), "1" for a dry run. Returns {status, keys, bytes, existed}: status 1 when deleted (or,
# in a dry run, it would be), -1 when a turn holds the session's lease, -2 when active again
# after the cutoff; `existed` 0 when the session hash was already gone (a stale index entry).
# One script for every deletion (the routes, chatctl, the bulk paths): a turn admitted
# between a check and a delete cannot bring a half-deleted session back.
DELETE_SESSION = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1, 0, 0, 1} end
local score = redis.call('ZSCORE', KEYS[4], ARGV[1])
local cutoff = tonumber(ARGV[2]) or math.huge
if score and tonumber(score) > cutoff then return {-2, 0, 0, 1} end
local existed = redis.call('EXISTS', KEYS[1])
local keys, bytes = 0, 0
for i = 1, 2 do
  local size = redis.call('MEMORY', 'USAGE', KEYS[i])
  if size then keys = keys + 1; bytes = bytes + size end
end
if ARGV[3] ~= '1' then
  redis.call('UNLINK', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return {1, keys, bytes, existed}
"""

# KEYS: session hash, messages, lock. Deletes the messages unless a turn holds the lease.
_CLEAR_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'busy' end
redis.call('UNLINK', KEYS[2])
return 'ok'
"""

BUSY_MESSAGE = "An answer is being generated in this session; stop it first."


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
    model: str | None = None  # set at start or by PATCH /chat/sessions/{id}; None: the persona's or the default


@dataclass
class Admission:
    """A turn admitted by `HistoryStore.admit_turn`: its persona, prompt window and the session's model."""

    turn_id: str
    role: str
    window: list[dict[str, Any]] = field(default_factory=list)
    before: int = 0  # messages stored before the turn (before from_turn's, with from_turn)
    # Set when the send's client_message_id already started a turn: that turn's id (nothing
    # was admitted; the send is a repeat and reads that turn).
    duplicate_of: str | None = None
    model: str | None = None  # the session's model (POST /chat/start), if it has one


@dataclass(frozen=True)
class Limits:
    history_window: int
    history_max: int
    history_ttl_seconds: int
    lease_ms: int
    turn_stream_ttl_seconds: int
    max_concurrent_turns: int
    rate_limit_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            history_window=settings.history_window,
            history_max=settings.history_max,
            history_ttl_seconds=settings.history_ttl_seconds,
            # A crashed instance's turn keeps its session (and a concurrency slot) no longer than this.
            lease_ms=int(settings.turn_lease_seconds * 1000),
            turn_stream_ttl_seconds=settings.turn_stream_ttl_seconds,
            max_concurrent_turns=settings.max_concurrent_turns_per_user,
            rate_limit_per_minute=settings.rate_limit_per_minute,
        )


class HistoryStore:
    def __init__(self, redis: Redis, keys: KeySpace, limits: Limits) -> None:
        self._redis = redis
        self._keys = keys
        self._limits = limits
        self._admit = redis.register_script(_ADMIT_TURN)
        self._commit = redis.register_script(_COMMIT_TURN)
        self._renew = redis.register_script(_RENEW_LEASE)
        self._release = redis.register_script(_RELEASE_TURN)
        self._end_lost = redis.register_script(_END_LOST_TURN)
        self._admit_one_off = redis.register_script(_ADMIT_ONE_OFF)
        self._delete = redis.register_script(DELETE_SESSION)
        self._clear = redis.register_script(_CLEAR_SESSION)
        self._update = redis.register_script(_UPDATE_SESSION)
        self._auto_title = redis.register_script(_AUTO_TITLE)

    @property
    def lease_seconds(self) -> float:
        return self._limits.lease_ms / 1000

    # -- sessions ---------------------------------------------------------------------

    @translate_redis_errors
    async def create_session(self, user: str, role: str, title: str | None, model: str | None = None) -> SessionInfo:
        session_id = secrets.token_hex(16)  # 128 random bits
        now_ms = time.time() * 1000
        created = _iso_from_ms(now_ms)
        fields = {"role": role, "created_at": created, "last_activity": created}
        if title:
            fields["title"] = title
            fields["title_source"] = "user"
        if model:
            fields["model"] = model
        ttl = self._limits.history_ttl_seconds
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.session(user, session_id), mapping=fields)
            pipe.expire(self._keys.session(user, session_id), ttl)
            pipe.zadd(self._keys.sessions(user), {session_id: now_ms})
            pipe.expire(self._keys.sessions(user), ttl)
            await pipe.execute()
        return SessionInfo(session_id, role, title or "", created, created, 0, model=model or None)

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
    async def clear_session(self, user: str, session_id: str) -> None:
        """Delete the session's messages; the session itself stays. 409 while a turn holds it."""
        if not is_session_id(session_id):
            raise SessionNotFound()
        keys = [
            self._session_key(user, session_id),
            self._keys.messages(user, session_id),
            self._keys.lock(user, session_id),
        ]
        status = await self._clear(keys=keys)
        if status == b"missing":
            raise SessionNotFound()
        if status == b"busy":
            raise TurnInProgress(BUSY_MESSAGE)

    @translate_redis_errors
    async def delete_session(self, user: str, session_id: str) -> None:
        """Delete the session and its messages, atomically; 409 while a turn holds it."""
        if not is_session_id(session_id):
            raise SessionNotFound()
        keys = [
            self._session_key(user, session_id),
            self._keys.messages(user, session_id),
            self._keys.lock(user, session_id),
            self._keys.sessions(user),
        ]
        status, _keys, _bytes, existed = await self._delete(keys=keys, args=[session_id, "+inf", "0"])
        if status == -1:
            raise TurnInProgress(BUSY_MESSAGE)
        if not existed:
            raise SessionNotFound()

    @translate_redis_errors
    async def update_session(
        self, user: str, session_id: str, *, title: str | None = None, role: str | None = None, model: str | None = None
    ) -> SessionInfo:
        """Change the session's title (then never replaced by an automatic one), persona or
        model; SessionNotFound for a missing or foreign session. The caller validates."""
        if not is_session_id(session_id):
            raise SessionNotFound()
        fields: list[str] = []
        if title is not None:
            fields += ["title", title[:EDITED_TITLE_CHARS], "title_source", "user"]
        if role is not None:
            fields += ["role", role]
        if model is not None:
            fields += ["model", model]
        if not await self._update(keys=[self._session_key(user, session_id)], args=fields):
            raise SessionNotFound()
        return await self.get_session(user, session_id)

    @translate_redis_errors
    async def claim_auto_title(self, user: str, session_id: str) -> bool:
        """Whether this caller may ask for the session's automatic title: true once per
        session, while its title is still its first message (never over a user's title)."""
        return bool(await self._auto_title(keys=[self._session_key(user, session_id)], args=["claim"]))

    @translate_redis_errors
    async def store_auto_title(self, user: str, session_id: str, title: str) -> bool:
        """Store a claimed automatic title, unless the user set one meanwhile."""
        keys = [self._session_key(user, session_id)]
        return bool(await self._auto_title(keys=keys, args=["set", title[:TITLE_CHARS]]))

    # -- turns ------------------------------------------------------------------------

    @translate_redis_errors
    async def admit_turn(
        self,
        user: str,
        session_id: str,
        turn_id: str,
        *,
        role: str | None,
        default_role: str,
        known_roles: Sequence[str],
        from_turn: str | None = None,
        client_message_id: str | None = None,
    ) -> Admission:
        """Atomically take the session's lease, read the prompt window and the session's model.

        The persona is `role`, else the session's own if it is one of `known_roles` or one of
        the user's own personas, else `default_role`. Writes no event (the turn writes its
        `start`). Safe to repeat with the same `turn_id`. Raises SessionNotFound, TurnInProgress (409) or
        RateLimited (429).

        With `from_turn`, the window is read from the messages before that turn (TurnNotFound
        when the session has no such turn). With `client_message_id`, a send whose id already
        started a turn in this session (while that turn's stream is kept) admits nothing and
        answers that turn's id in `duplicate_of`; otherwise the id is bound to this turn.
        """
        if not is_session_id(session_id):
            raise SessionNotFound()
        if from_turn is not None and not is_turn_id(from_turn):
            raise TurnNotFound()
        limits = self._limits
        keys = [
            self._session_key(user, session_id),
            self._keys.lock(user, session_id),
            self._keys.running(user),
            self._keys.rate(user),
            self._keys.messages(user, session_id),
            self._keys.turn(user, session_id, turn_id),
            self._keys.personas(user),
            self._keys.client_message(user, session_id, client_message_id)
            if client_message_id
            else self._session_key(user, session_id),
        ]
        args = [
            turn_id,
            _now_ms(),
            limits.lease_ms,
            limits.max_concurrent_turns,
            limits.rate_limit_per_minute,
            60_000,
            limits.history_window,
            limits.turn_stream_ttl_seconds,
            "",  # the first event's head once: the slot is kept so that the arguments keep their places
            role or "",
            default_role,
            *known_roles,
            from_turn or "",
            client_message_id or "",
        ]
        reply = await self._admit(keys=keys, args=args)
        status = reply[0].decode()
        if status == "missing":
            raise SessionNotFound()
        if status == "duplicate":
            return Admission(turn_id, "", duplicate_of=reply[1].decode())
        if status == "no_turn":
            raise TurnNotFound()
        if status == "busy":
            raise TurnInProgress()
        self._check_limits(reply)
        chosen: bytes = reply[1]
        window = [_prompt_message(orjson.loads(item)) for item in reply[2]]
        return Admission(turn_id, chosen.decode(), window, int(reply[3]), model=reply[4].decode() or None)

    @translate_redis_errors
    async def commit_turn(
        self,
        user: str,
        session_id: str,
        turn_id: str,
        *,
        first_seq: int,
        payloads: Sequence[bytes],
        messages: Sequence[dict[str, Any]],
        role: str,
        title: str,
        lost_payload: bytes,
        from_turn: str | None = None,
    ) -> str:
        """End a turn: its remaining events and final event (the last of `payloads`, numbered
        from `first_seq`), its messages appended to history (none for a failed turn), history
        trimmed, TTLs refreshed, the lease and the concurrency slot released; one script.

        Returns "ok"; "done" when an earlier attempt had already committed it (its reply was
        lost); "lost" when the turn no longer held its lease or its session was deleted:
        nothing was stored, and the stream ends with `lost_payload` (or the final event that
        ended it already). Retried over a short outage, then StoreUnavailable.

        With `from_turn` (and messages), that turn's messages and every later one are cut
        before the new ones are appended, in the same script.
        """
        limits = self._limits
        keys = [
            self._session_key(user, session_id),
            self._keys.messages(user, session_id),
            self._keys.sessions(user),
            self._keys.lock(user, session_id),
            self._keys.running(user),
            self._keys.turn(user, session_id, turn_id),
        ]
        now_ms = _now_ms()
        args = [
            turn_id,
            session_id,
            first_seq,
            len(payloads),
            len(messages),
            now_ms,
            _iso_from_ms(now_ms),
            limits.history_max,
            limits.history_ttl_seconds,
            limits.turn_stream_ttl_seconds,
            role,
            title[:TITLE_CHARS],
            lost_payload,
            *payloads,
            *[orjson.dumps(message) for message in messages],
            from_turn or "",
        ]
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                reply = await self._commit(keys=keys, args=args)
                return str(reply[0].decode())
            except UNREACHABLE:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    @translate_redis_errors
    async def renew_lease(self, user: str, session_id: str, turn_id: str) -> bool:
        """Extend the turn's lease; False when it is no longer the turn's (it ran out, or a stop
        ended the turn): the turn must then end without storing anything."""
        keys = self._keys_of_lease(user, session_id)
        return bool(await self._renew(keys=keys, args=[turn_id, _now_ms(), self._limits.lease_ms]))

    @translate_redis_errors
    async def release_turn(self, user: str, session_id: str, turn_id: str) -> None:
        """Release the turn's lease and slot (only if it still holds them); stores nothing."""
        await self._release(keys=self._keys_of_lease(user, session_id), args=[turn_id])

    def _check_limits(self, reply: list[Any]) -> None:
        """RateLimited (429) for an admission refused by the user's limits."""
        status = reply[0].decode()
        if status == "concurrency":
            raise RateLimited(
                f"At most {self._limits.max_concurrent_turns} answers can be generated at once per user.",
                retry_after=1,
            )
        if status == "rate":
            raise RateLimited(
                f"At most {self._limits.rate_limit_per_minute} messages per minute per user.",
                retry_after=-(-int(reply[1]) // 1000),
            )

    # -- one-off answers: the user's limits without a session ------------------------------

    @translate_redis_errors
    async def admit_one_off(self, user: str, turn_id: str) -> None:
        """Take a slot of the user's concurrent answers and count a message against the rate
        limit, for an answer that belongs to no session; RateLimited (429) when they are used
        up. The slot is a lease like a turn's: renew it (`renew_slot`) while the answer runs."""
        limits = self._limits
        keys = [self._keys.running(user), self._keys.rate(user)]
        args = [turn_id, _now_ms(), limits.lease_ms, limits.max_concurrent_turns, limits.rate_limit_per_minute]
        self._check_limits(await self._admit_one_off(keys=keys, args=[*args, 60_000]))

    @translate_redis_errors
    async def renew_slot(self, user: str, turn_id: str) -> bool:
        """Extend a one-off answer's slot. Always True: an answer with no session has nothing to
        lose with its slot, and goes on (a slot already released is not taken again: XX)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.running(user), {turn_id: _now_ms() + self._limits.lease_ms}, xx=True)
            # Every slot is a lease of the same length, so none outlives this expiry.
            pipe.pexpire(self._keys.running(user), self._limits.lease_ms)
            await pipe.execute()
        return True

    @translate_redis_errors
    async def release_slot(self, user: str, turn_id: str) -> None:
        await self._redis.zrem(self._keys.running(user), turn_id)

    @translate_redis_errors
    async def end_lost_turn(self, user: str, session_id: str, turn_id: str, final: bytes, *, force: bool) -> str:
        """End a turn whose owner is gone: write `final` as its last event unless it has one,
        and release its lease and slot. Without `force`, a turn still holding its lease is
        left alone ("running"). Returns "lost" (ended here), "ended" (it had its final
        event already), "gone" (no such stream) or "running"."""
        keys = [*self._keys_of_lease(user, session_id), self._keys.turn(user, session_id, turn_id)]
        args = [turn_id, "1" if force else "0", final, self._limits.turn_stream_ttl_seconds]
        reply = await self._end_lost(keys=keys, args=args)
        return str(reply[0].decode())

    def _session_key(self, user: str, session_id: str) -> str:
        return self._keys.session(user, session_id)

    def _keys_of_lease(self, user: str, session_id: str) -> list[str]:
        return [self._keys.lock(user, session_id), self._keys.running(user)]


def _now_ms() -> int:
    return int(time.time() * 1000)


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
        model=text.get("model") or None,
    )
