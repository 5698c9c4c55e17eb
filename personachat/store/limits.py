"""Limits that are not a user's own: how many anonymous identities one client address may mint.

Per-user limits (messages per minute, answers at once) live with the turn's admission in
`history`. They mean nothing if a new user costs nothing: a client that drops its cookie
gets a fresh identity, and so a fresh set of limits, on every request. So minting is
itself counted, per client address, in a fixed one-minute window in Redis (shared by every
instance of the service).
"""

from __future__ import annotations

from personachat.errors import RateLimited
from personachat.store.client import Redis, translate_redis_errors
from personachat.store.keys import KeySpace

WINDOW_MS = 60_000

# KEYS: the client's counter. ARGV: limit, window ms. Returns {allowed 0/1, ms left in the window}.
_COUNT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return {0, redis.call('PTTL', KEYS[1])} end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, 0}
"""


class IdentityLimits:
    def __init__(self, redis: Redis, keys: KeySpace, *, anonymous_per_minute: int) -> None:
        self._keys = keys
        self._per_minute = anonymous_per_minute
        self._count = redis.register_script(_COUNT)

    @translate_redis_errors
    async def count_anonymous(self, client: str) -> None:
        """Count one new anonymous identity for `client`; RateLimited (429) beyond the limit."""
        if self._per_minute <= 0:
            return
        allowed, left_ms = await self._count(
            keys=[self._keys.anonymous_mints(client)], args=[self._per_minute, WINDOW_MS]
        )
        if not allowed:
            raise RateLimited(
                f"At most {self._per_minute} new anonymous identities per minute from one address; "
                "keep the cookie you were given, or use an API key.",
                retry_after=-(-int(left_ms) // 1000),
            )
