"""Whole-store maintenance for the admin CLI and scripts: listing, deleting, exporting,
importing and counting sessions across users, and removing orphaned keys.

Guarantees:
- keys are found with SCAN (never KEYS), on every primary of a Redis Cluster, and only
  under the service's prefix; nothing outside it is read or touched;
- every deletion is a small Lua script on one user's keys (one hash slot), so it is atomic
  against the service: a session whose turn is running (its lock key exists) is never
  deleted, and an idle session that became active after it was selected is left alone;
- work goes in batches (a pipeline of scripts, UNLINK inside), each batch independent, so a
  run that is interrupted can simply be run again: it finds what is left and finishes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from personachat.store.client import Redis, translate_redis_errors
from personachat.store.history import DELETE_SESSION, SessionInfo, _session_info, now_iso
from personachat.store.keys import KeySpace, is_session_id, is_user_id

EXPORT_FORMAT = "personachat-export"
EXPORT_VERSION = 1
SCAN_COUNT = 1_000

# KEYS: session hash, lock, orphan key. Unlinks the key only while its session is still gone.
_DELETE_ORPHAN = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('UNLINK', KEYS[3])
"""

# KEYS: session hash, user index. ARGV: session id. Drops an index entry whose session is gone.
_DROP_INDEX_ENTRY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: session hash, messages, user index. ARGV: session id, last activity ms, ttl s, then
# the metadata as field/value pairs after '--', then the messages. Never overwrites.
_IMPORT_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
local i = 4
local meta = {}
while ARGV[i] ~= '--' do meta[#meta + 1] = ARGV[i]; i = i + 1 end
redis.call('HSET', KEYS[1], unpack(meta))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('DEL', KEYS[2])
if #ARGV > i then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i + 1))
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
return 1
"""


@dataclass(frozen=True)
class SessionRef:
    user: str
    session_id: str


@dataclass
class SessionRow:
    """A session as the admin sees it: whose, and its summary."""

    user: str
    info: SessionInfo
    last_activity_ms: float


@dataclass
class Tally:
    """What a run did (or, in a dry run, would do)."""

    deleted: int = 0  # sessions, or orphaned keys and index entries
    skipped_running: list[SessionRef] = field(default_factory=list)
    skipped_active: int = 0
    bytes: int = 0
    keys: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, amount: int = 1) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + amount
        self.deleted += amount


@dataclass
class Stats:
    users: int = 0
    sessions: int = 0
    messages: int = 0
    keys: int = 0
    bytes: int = 0
    api_keys: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


# Called after each batch with the number of items it handled; the CLI advances its
# progress bar with it, and tests use it to interrupt a run halfway.
BatchHook = Callable[[int], None]


def _noop(_: int) -> None:
    return None


async def _batched(items: AsyncIterator[Any], size: int) -> AsyncIterator[list[Any]]:
    batch: list[Any] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Maintenance:
    def __init__(self, redis: Redis, keys: KeySpace, *, history_ttl_seconds: int, batch_size: int = 500) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = history_ttl_seconds
        self.batch_size = batch_size

    # -- finding keys -----------------------------------------------------------------------

    async def scan(self, match: str, type_: str | None = None) -> AsyncIterator[list[str]]:
        """Keys matching `match`, one SCAN reply at a time, on every primary of a cluster."""
        if not match.startswith(f"{self._keys.prefix}:"):
            raise ValueError("maintenance scans stay inside the service's prefix")
        nodes = self._redis.get_primaries() if hasattr(self._redis, "get_primaries") else [None]
        for node in nodes:
            extra = {} if node is None else {"target_nodes": node}
            cursor = 0
            while True:
                reply = await self._redis.scan(cursor, match=match, count=SCAN_COUNT, _type=type_, **extra)
                cursor, found = reply if node is None else _single_node_reply(reply)
                if found:
                    yield [key.decode() for key in found]
                if cursor == 0:
                    break

    async def users(self) -> AsyncIterator[str]:
        """Every user with a session index."""
        async for batch in self.scan(self._keys.user_indexes_pattern(), "zset"):
            for key in batch:
                parsed = self._keys.parse(key)
                if parsed is not None and parsed.kind == "sessions" and parsed.user:
                    yield parsed.user

    async def session_refs(
        self, user: str | None = None, idle_before_ms: float | None = None
    ) -> AsyncIterator[SessionRef]:
        """Sessions from the users' indexes (all users, or one), optionally only those idle
        since before `idle_before_ms`."""
        high = "+inf" if idle_before_ms is None else f"({idle_before_ms}"
        users: AsyncIterator[str] = _one(user) if user is not None else self.users()
        async for batch in _batched(users, 100):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.zrangebyscore(self._keys.sessions(name), "-inf", high)
                replies = await pipe.execute()
            for name, ids in zip(batch, replies, strict=True):
                for sid in ids:
                    yield SessionRef(name, sid.decode())

    async def sessions(self, user: str | None = None, idle_before_ms: float | None = None) -> AsyncIterator[SessionRow]:
        """Session rows (with title, message count, last activity); index entries whose
        session is gone are left out."""
        async for batch in _batched(self.session_refs(user, idle_before_ms), self.batch_size):
            async with self._redis.pipeline(transaction=False) as pipe:
                for ref in batch:
                    pipe.hgetall(self._keys.session(ref.user, ref.session_id))
                    pipe.get(self._keys.lock(ref.user, ref.session_id))
                    pipe.llen(self._keys.messages(ref.user, ref.session_id))
                    pipe.zscore(self._keys.sessions(ref.user), ref.session_id)
                replies = await pipe.execute()
            for i, ref in enumerate(batch):
                meta, lock, count, score = replies[4 * i : 4 * i + 4]
                if meta:
                    info = _session_info(ref.session_id, meta, lock, count)
                    yield SessionRow(ref.user, info, float(score or 0))

    # -- deleting sessions --------------------------------------------------------------------

    @translate_redis_errors
    async def count_sessions(self, user: str | None = None, idle_before_ms: float | None = None) -> int:
        total = 0
        async for _ in self.session_refs(user, idle_before_ms):
            total += 1
        return total

    @translate_redis_errors
    async def delete_sessions(
        self,
        user: str | None = None,
        idle_before_ms: float | None = None,
        *,
        dry_run: bool = False,
        on_batch: BatchHook = _noop,
    ) -> Tally:
        """Delete sessions (with their messages and index entries): one user's or everyone's,
        all or only those idle since before `idle_before_ms`. Running sessions are skipped."""
        tally = Tally()
        cutoff = "+inf" if idle_before_ms is None else str(int(idle_before_ms))
        async for batch in _batched(self.session_refs(user, idle_before_ms), self.batch_size):
            async with self._redis.pipeline(transaction=False) as pipe:
                for ref in batch:
                    keys = [
                        self._keys.session(ref.user, ref.session_id),
                        self._keys.messages(ref.user, ref.session_id),
                        self._keys.lock(ref.user, ref.session_id),
                        self._keys.sessions(ref.user),
                    ]
                    # EVAL, not EVALSHA: cluster pipelines refuse EVALSHA (Redis caches the script anyway).
                    pipe.eval(DELETE_SESSION, 4, *keys, ref.session_id, cutoff, "1" if dry_run else "0")
                results = await pipe.execute()
            for ref, (status, keys_gone, size, _existed) in zip(batch, results, strict=True):
                if status == -1:
                    tally.skipped_running.append(ref)
                elif status == -2:
                    tally.skipped_active += 1
                else:
                    # An index entry whose session had expired is dropped too, and told apart.
                    tally.count("sessions" if keys_gone else "index entries")
                    tally.keys += keys_gone
                    tally.bytes += size
            on_batch(len(batch))
        return tally

    # -- orphans ------------------------------------------------------------------------------

    @translate_redis_errors
    async def clean_orphans(self, *, dry_run: bool = False, on_batch: BatchHook = _noop) -> Tally:
        """Remove what no longer belongs to a session: turn streams and message lists whose
        session is gone, index entries pointing at deleted sessions, and expired entries of
        the running-turns sets. Keys of a session with a lock are left alone."""
        tally = Tally()
        now_ms = int(time.time() * 1000)
        async for batch in self.scan(self._keys.all_keys_pattern()):
            parsed = [(key, self._keys.parse(key)) for key in batch]
            candidates = [(key, name) for key, name in parsed if name and name.kind in ("m", "t") and name.user]
            indexes = [(key, name.user) for key, name in parsed if name and name.kind == "sessions" and name.user]
            running = [key for key, name in parsed if name and name.kind == "running"]
            await self._orphan_keys(candidates, tally, dry_run)
            await self._stale_index_entries(indexes, tally, dry_run)
            await self._expired_running(running, now_ms, tally, dry_run)
            on_batch(len(batch))
        return tally

    async def _orphan_keys(self, candidates: list[tuple[str, Any]], tally: Tally, dry_run: bool) -> None:
        if not candidates:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for _key, name in candidates:
                pipe.exists(self._keys.session(name.user, name.session_id))
                pipe.exists(self._keys.lock(name.user, name.session_id))
            alive = await pipe.execute()
        orphans = [(k, n) for i, (k, n) in enumerate(candidates) if not alive[2 * i] and not alive[2 * i + 1]]
        if not orphans:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, _name in orphans:
                pipe.memory_usage(key)
            sizes = await pipe.execute()
        if dry_run:
            for (_key, name), size in zip(orphans, sizes, strict=True):
                tally.count(_ORPHAN_KINDS[name.kind])
                tally.bytes += size or 0
                tally.keys += 1
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, name in orphans:
                session_key = self._keys.session(name.user, name.session_id)
                pipe.eval(_DELETE_ORPHAN, 3, session_key, self._keys.lock(name.user, name.session_id), key)
            results = await pipe.execute()
        for (_key, name), size, result in zip(orphans, sizes, results, strict=True):
            if result:
                tally.count(_ORPHAN_KINDS[name.kind])
                tally.bytes += size or 0
                tally.keys += 1

    async def _stale_index_entries(self, indexes: list[tuple[str, str]], tally: Tally, dry_run: bool) -> None:
        for index, user in indexes:
            members = [sid.decode() for sid in await self._redis.zrange(index, 0, -1)]
            for chunk in _chunks(members, self.batch_size):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for sid in chunk:
                        pipe.exists(self._keys.session(user, sid))
                    alive = await pipe.execute()
                stale = [sid for sid, exists in zip(chunk, alive, strict=True) if not exists]
                if not stale:
                    continue
                if dry_run:
                    tally.count("index entries", len(stale))
                    continue
                async with self._redis.pipeline(transaction=False) as pipe:
                    for sid in stale:
                        pipe.eval(_DROP_INDEX_ENTRY, 2, self._keys.session(user, sid), index, sid)
                    tally.count("index entries", sum(await pipe.execute()))

    async def _expired_running(self, running: list[str], now_ms: int, tally: Tally, dry_run: bool) -> None:
        if not running:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in running:
                if dry_run:
                    pipe.zcount(key, "-inf", now_ms)
                else:
                    pipe.zremrangebyscore(key, "-inf", now_ms)
            removed = await pipe.execute()
        if sum(removed):
            tally.count("expired running entries", sum(removed))

    # -- counting ------------------------------------------------------------------------------

    @translate_redis_errors
    async def stats(self, on_batch: BatchHook = _noop) -> Stats:
        """Users, sessions, messages, keys and memory of every key under the prefix."""
        stats = Stats()
        users: set[str] = set()
        async for batch in self.scan(self._keys.all_keys_pattern()):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.memory_usage(key)
                sizes = await pipe.execute()
            message_lists = []
            for key, size in zip(batch, sizes, strict=True):
                name = self._keys.parse(key)
                kind = name.kind if name else "other"
                stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1
                stats.keys += 1
                stats.bytes += size or 0
                if name is not None and name.kind == "s" and name.user:
                    stats.sessions += 1
                    users.add(name.user)
                elif name is not None and name.kind == "m":
                    message_lists.append(key)
                elif name is not None and name.kind == "apikey":
                    stats.api_keys += 1
            if message_lists:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in message_lists:
                        pipe.llen(key)
                    stats.messages += sum(await pipe.execute())
            on_batch(len(batch))
        stats.users = len(users)
        return stats

    # -- export and import ---------------------------------------------------------------------

    @translate_redis_errors
    async def export(self, user: str, session_id: str | None = None) -> dict[str, Any]:
        """A JSON-ready document with the user's sessions (or one), metadata and messages."""
        refs = [SessionRef(user, session_id)] if session_id else [r async for r in self.session_refs(user)]
        sessions = []
        for chunk in _chunks(refs, 100):
            async with self._redis.pipeline(transaction=False) as pipe:
                for ref in chunk:
                    pipe.hgetall(self._keys.session(ref.user, ref.session_id))
                    pipe.lrange(self._keys.messages(ref.user, ref.session_id), 0, -1)
                    pipe.zscore(self._keys.sessions(ref.user), ref.session_id)
                replies = await pipe.execute()
            for i, ref in enumerate(chunk):
                meta, raw, score = replies[3 * i : 3 * i + 3]
                if not meta:
                    continue
                sessions.append(
                    {
                        "user": ref.user,
                        "session_id": ref.session_id,
                        "last_activity_ms": int(score) if score is not None else None,
                        "meta": {key.decode(): value.decode() for key, value in sorted(meta.items())},
                        "messages": [orjson.loads(item) for item in raw],
                    }
                )
        sessions.sort(key=lambda item: (item["last_activity_ms"] or 0, item["session_id"]), reverse=True)
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": now_iso(), "sessions": sessions}

    @translate_redis_errors
    async def import_(self, document: Any, on_batch: BatchHook = _noop) -> tuple[int, int]:
        """Write the sessions of an export; returns (imported, skipped because present)."""
        sessions = validate_export(document)
        imported = skipped = 0
        for chunk in _chunks(sessions, self.batch_size):
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in chunk:
                    user, sid = item["user"], item["session_id"]
                    meta = [part for pair in item["meta"].items() for part in pair]
                    messages = [orjson.dumps(message) for message in item["messages"]]
                    score = item["last_activity_ms"] or int(time.time() * 1000)
                    keys = [self._keys.session(user, sid), self._keys.messages(user, sid), self._keys.sessions(user)]
                    pipe.eval(_IMPORT_SESSION, 3, *keys, sid, score, self._ttl, *meta, "--", *messages)
                results = await pipe.execute()
            imported += sum(results)
            skipped += len(results) - sum(results)
            on_batch(len(chunk))
        return imported, skipped


_ORPHAN_KINDS = {"m": "message lists", "t": "turn streams"}


class ExportFormatError(ValueError):
    """The file is not an export this tool wrote."""


def validate_export(document: Any) -> list[dict[str, Any]]:
    """The sessions of an export document, checked before anything is written."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"not a {EXPORT_FORMAT} document")
    if document.get("version") != EXPORT_VERSION:
        raise ExportFormatError(f"unsupported export version {document.get('version')!r}")
    sessions = document.get("sessions")
    if not isinstance(sessions, list):
        raise ExportFormatError("'sessions' must be a list")
    for number, item in enumerate(sessions, 1):
        where = f"session #{number}"
        if not isinstance(item, dict):
            raise ExportFormatError(f"{where} is not an object")
        if not isinstance(item.get("user"), str) or not is_user_id(item["user"]):
            raise ExportFormatError(f"{where}: invalid user id")
        if not isinstance(item.get("session_id"), str) or not is_session_id(item["session_id"]):
            raise ExportFormatError(f"{where}: invalid session id")
        meta = item.get("meta")
        if not isinstance(meta, dict) or not meta or not all(isinstance(v, str) for v in meta.values()):
            raise ExportFormatError(f"{where}: 'meta' must be a non-empty object of strings")
        if any(key == "--" for key in meta):
            raise ExportFormatError(f"{where}: invalid metadata field")
        messages = item.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ExportFormatError(f"{where}: 'messages' must be a list of objects")
        activity = item.get("last_activity_ms")
        if activity is not None and not isinstance(activity, int):
            raise ExportFormatError(f"{where}: 'last_activity_ms' must be an integer")
    return sessions


def _single_node_reply(reply: Any) -> tuple[int, list[bytes]]:
    # RedisCluster.scan answers ({node name: cursor}, keys) even for one target node.
    cursors, keys = reply
    return next(iter(cursors.values())), keys


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _one(user: str) -> AsyncIterator[str]:
    if not is_user_id(user):
        raise ValueError(f"invalid user id {user!r}")
    yield user
