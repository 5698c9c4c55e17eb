"""Connecting to Redis, and turning Redis failures into `StoreUnavailable` (HTTP 503).

The client is created in the app's lifespan (or by the CLI), never at import time: an
asyncio connection pool belongs to the event loop that first used it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from personachat import metrics
from personachat.errors import StoreUnavailable

# redis-py's command annotations mix the sync and async clients and bytes/str replies, so
# the service's code types its clients loosely and decodes replies explicitly.
Redis: TypeAlias = Any  # redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
Pipeline: TypeAlias = Any  # their pipelines

# Errors that mean "Redis is not reachable right now" (as opposed to a bug in a command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# The longest a blocking read (a remote reader's XREAD BLOCK) waits before it checks that its
# turn is alive; the socket timeout must exceed it.
BLOCK_MS = 2_000


def create_redis(url: str, *, cluster: bool = False, max_connections: int = 256) -> Redis:
    """A Redis (or Redis Cluster) client that fails fast when the server is away.

    A short retry with backoff rides over a restart or a dropped connection; after that
    the caller gets StoreUnavailable (503) instead of a request hanging for a minute.
    The pool *waits* for a free connection when all are busy (a burst of a thousand turns
    starting at once), where redis-py's default pool would fail with "Too many connections".
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": BLOCK_MS / 1000 + 5.0,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if cluster:
        return RedisCluster.from_url(url, max_connections=4 * max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


P = ParamSpec("P")
T = TypeVar("T")


def translate_redis_errors(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorator for store methods: an unreachable Redis becomes StoreUnavailable."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except UNREACHABLE as exc:
            metrics.REDIS_ERRORS.inc()
            raise StoreUnavailable() from exc

    return wrapper
