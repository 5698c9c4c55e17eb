"""API keys in Redis: only a key's SHA-256 is stored; the key itself is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from personachat.store.client import Redis, translate_redis_errors
from personachat.store.history import now_iso
from personachat.store.keys import KeySpace, is_user_id

API_KEY_PREFIX = "pck_"


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    user_id: str
    label: str
    created_at: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """API keys in Redis, by hash: create, look up, list and revoke."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys

    @translate_redis_errors
    async def create(self, user_id: str, label: str = "") -> tuple[str, ApiKeyInfo]:
        """A new key for `user_id`; the key is returned once and never stored."""
        if not is_user_id(user_id):
            raise ValueError("user ids are 1-64 letters, digits, '_', '.', '@' or '-'")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        info = ApiKeyInfo(key_id=secrets.token_hex(6), user_id=user_id, label=label, created_at=now_iso())
        digest = _hash(key)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.api_key(digest), mapping=info.__dict__)
            pipe.hset(self._keys.api_key_index(), info.key_id, digest)
            await pipe.execute()
        return key, info

    @translate_redis_errors
    async def user_for(self, key: str) -> str | None:
        user = await self._redis.hget(self._keys.api_key(_hash(key)), "user_id")
        return user.decode() if user else None

    @translate_redis_errors
    async def list(self) -> list[ApiKeyInfo]:
        digests = await self._redis.hgetall(self._keys.api_key_index())
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests.values():
                pipe.hgetall(self._keys.api_key(digest.decode()))
            replies = await pipe.execute()
        return sorted(
            (ApiKeyInfo(**{k.decode(): v.decode() for k, v in reply.items()}) for reply in replies if reply),
            key=lambda info: info.created_at,
        )

    @translate_redis_errors
    async def revoke(self, key_id: str) -> bool:
        digest = await self._redis.hget(self._keys.api_key_index(), key_id)
        if digest is None:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._keys.api_key(digest.decode()))
            pipe.hdel(self._keys.api_key_index(), key_id)
            await pipe.execute()
        return True
