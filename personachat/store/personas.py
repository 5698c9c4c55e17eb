"""Personas of one's own in Redis: one HASH per user, persona key -> the persona as JSON.

The hash lives under the user's hash tag (`<prefix>:{<user>}:personas`), so on a Redis
Cluster it shares the slot of the user's sessions. Guarantees:
- the per-user limit is checked and the persona written in one script, so two creates
  racing for the last place cannot both pass;
- a replace keeps the persona's `created_at` and never resurrects a persona deleted
  meanwhile (it answers "missing");
- the hash has the history's TTL (HISTORY_TTL_SECONDS), refreshed by every read and write
  of the user's personas, including a turn that uses one: personas go away together with
  the user's conversations when the user stops coming, and never while they chat.

Records are plain dicts (`key`, `name`, `description`, `system_prompt`, `welcome_message`,
`model`, `temperature`, `created_at`, `updated_at`); personachat.personas validates them.
"""

from __future__ import annotations

from typing import Any

import orjson

from personachat.store.client import Redis, translate_redis_errors
from personachat.store.keys import KeySpace

# KEYS: personas hash. ARGV: persona key, record JSON, max personas, ttl s.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'exists' end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'ok'
"""

# KEYS: personas hash. ARGV: persona key, record JSON (its created_at is replaced), ttl s.
# Returns the stored JSON, or false when the persona does not exist.
_REPLACE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
local record = cjson.decode(ARGV[2])
record['created_at'] = cjson.decode(old)['created_at']
local text = cjson.encode(record)
redis.call('HSET', KEYS[1], ARGV[1], text)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return text
"""


class PersonaStore:
    """A user's own personas: list, get, create (within a limit), replace, delete."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._create = redis.register_script(_CREATE)
        self._replace = redis.register_script(_REPLACE)

    @translate_redis_errors
    async def list(self, user: str) -> list[dict[str, Any]]:
        """The user's personas, oldest first (one HGETALL; the TTL is refreshed)."""
        key = self._keys.personas(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self._ttl)
            raw, _ = await pipe.execute()
        records = [orjson.loads(value) for value in raw.values()]
        return sorted(records, key=lambda record: (record.get("created_at", ""), record.get("key", "")))

    @translate_redis_errors
    async def get(self, user: str, persona_key: str) -> dict[str, Any] | None:
        key = self._keys.personas(user)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, persona_key)
            pipe.expire(key, self._ttl)
            raw, _ = await pipe.execute()
        return None if raw is None else dict(orjson.loads(raw))

    @translate_redis_errors
    async def count(self, user: str) -> int:
        return int(await self._redis.hlen(self._keys.personas(user)))

    @translate_redis_errors
    async def create(self, user: str, record: dict[str, Any], max_personas: int) -> str:
        """Add a persona: "ok", "full" (the user has `max_personas`) or "exists" (key taken)."""
        reply = await self._create(
            keys=[self._keys.personas(user)], args=[record["key"], orjson.dumps(record), max_personas, self._ttl]
        )
        return str(reply.decode() if isinstance(reply, bytes) else reply)

    @translate_redis_errors
    async def replace(self, user: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """Replace a persona, keeping its created_at; None when it does not exist."""
        reply = await self._replace(
            keys=[self._keys.personas(user)], args=[record["key"], orjson.dumps(record), self._ttl]
        )
        return None if reply is None else dict(orjson.loads(reply))

    @translate_redis_errors
    async def delete(self, user: str, persona_key: str) -> bool:
        return bool(await self._redis.hdel(self._keys.personas(user), persona_key))

    @translate_redis_errors
    async def delete_all(self, user: str) -> int:
        key = self._keys.personas(user)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
        return int(count)
