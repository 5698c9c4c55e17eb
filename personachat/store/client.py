"""Connecting to Redis, and turning Redis failures into `StoreUnavailable` (HTTP 503).

The clients are created in the app's lifespan (or by the CLI), never at import time: an
asyncio connection pool belongs to the event loop that first used it. There are two:

- the command client (`create_redis`), for every ordinary command, script and transaction;
- the blocking client (`create_blocking_redis`), for `XREAD BLOCK` alone. A blocked read
  holds its connection for up to BLOCK_MS; on the command pool a few hundred resuming
  readers would leave commits waiting for a free connection (and a cluster pool, which
  does not wait, would fail them at once). With a pool of their own, readers can only
  ever wait for each other.

Every Redis failure that means "the store cannot serve this now", rather than a bug in a
command, is translated here and nowhere else (the way httpx's `map_httpcore_exceptions`
maps transport errors): `UNAVAILABLE` is the table, `store_errors()` the context manager and
`translate_redis_errors` the decorator that apply it. Everything else (a wrong type, a
syntax error in a script) stays a bug and surfaces as one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from personachat import metrics
from personachat.errors import StoreUnavailable

# redis-py's command annotations mix the sync and async clients and bytes/str replies, so
# the service's code types its clients loosely and decodes replies explicitly.
Redis: TypeAlias = Any  # redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
Pipeline: TypeAlias = Any  # their pipelines

_AWAY = "The conversation store (Redis) is unreachable; try again shortly."

# The table: each failure that means "the store cannot serve us right now", with what the
# client is told. The first matching class wins, so subclasses come before their bases.
UNAVAILABLE_DETAILS: dict[type[BaseException], str] = {
    # LOADING after a restart (BusyLoadingError), a full pool (MaxConnectionsError), refused
    # or reset connections: all ConnectionError.
    RedisConnectionError: _AWAY,
    RedisTimeoutError: "The conversation store (Redis) did not answer in time; try again shortly.",
    OSError: _AWAY,
    # A replica, e.g. the old primary after a failover, refuses writes.
    ReadOnlyError: "The conversation store (Redis) is read-only right now (a failover?); try again shortly.",
    # maxmemory reached under the noeviction policy.
    OutOfMemoryError: "The conversation store (Redis) is out of memory; try again later.",
    # CLUSTERDOWN and MASTERDOWN, a slot being migrated, no node serving a slot, and
    # redirections that did not settle within the cluster client's own retries.
    ClusterDownError: "The conversation store (Redis Cluster) is down; try again shortly.",
    TryAgainError: "The conversation store (Redis Cluster) is resharding; try again shortly.",
    SlotNotCoveredError: "The conversation store (Redis Cluster) does not serve this data right now.",
    ClusterError: "The conversation store (Redis Cluster) is unstable; try again shortly.",
    # MOVED and ASK (MovedError is an AskError): from a single node, REDIS_CLUSTER is unset.
    AskError: "The conversation store (Redis) keeps redirecting to other nodes (a cluster? set REDIS_CLUSTER).",
}

# The same classes as a tuple, for `except UNAVAILABLE:` where a caller retries on its own
# (spelled out, so that type checkers see each class; a test checks it matches the table).
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ClusterError,
    AskError,
)
UNREACHABLE = UNAVAILABLE  # the older name, kept for callers
_TRANSLATED = (*UNAVAILABLE, ResponseError, RedisClusterException)  # what store_errors() looks at

# Refusals that redis-py reports as a plain ResponseError, told apart by their prefix.
_UNAVAILABLE_REPLIES = {
    "MISCONF": "The conversation store (Redis) refuses writes: it cannot save to disk.",
    "NOREPLICAS": "The conversation store (Redis) has too few replicas to accept writes.",
}

# The cluster client's own failures that mean its nodes are away or disagree (its other
# RedisClusterExceptions, such as keys in different slots, are bugs).
_CLUSTER_AWAY = ("Redis Cluster cannot be connected", "startup_nodes could not agree", "All slots are not covered")

# The longest a blocking read (a remote reader's XREAD BLOCK) waits before it checks that its
# turn is alive; the blocking client's socket timeout must exceed it.
BLOCK_MS = 2_000

COMMAND_TIMEOUT = 7.0  # seconds without a reply before a command is given up (bulk scripts included)


def store_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable a Redis failure stands for, or None when it is not one (a bug)."""
    for kind, detail in UNAVAILABLE_DETAILS.items():
        if isinstance(exc, kind):
            return StoreUnavailable(detail)
    if isinstance(exc, ResponseError):
        prefix = str(exc).split(" ", 1)[0]
        if prefix in _UNAVAILABLE_REPLIES:
            return StoreUnavailable(_UNAVAILABLE_REPLIES[prefix])
    if isinstance(exc, RedisClusterException) and str(exc).startswith(_CLUSTER_AWAY):
        return StoreUnavailable("The conversation store (Redis Cluster) is unreachable; try again shortly.")
    return None


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Within this block, every Redis failure of the table becomes StoreUnavailable."""
    try:
        yield
    except StoreUnavailable:
        raise
    except _TRANSLATED as exc:
        translated = store_unavailable(exc)
        if translated is None:
            raise
        metrics.REDIS_ERRORS.inc()
        raise translated from exc


P = ParamSpec("P")
T = TypeVar("T")


def translate_redis_errors(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorator for store methods: `store_errors()` around the whole call."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with store_errors():
            return await func(*args, **kwargs)

    return wrapper


def _options(socket_timeout: float) -> dict[str, Any]:
    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": socket_timeout,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def create_redis(url: str, *, cluster: bool = False, max_connections: int = 256) -> Redis:
    """The command client: a Redis (or Redis Cluster) client that fails fast when the server is away.

    A short retry with backoff rides over a restart or a dropped connection; after that
    the caller gets StoreUnavailable (503) instead of a request hanging for a minute.
    The pool *waits* for a free connection when all are busy (a burst of a thousand turns
    starting at once), where redis-py's default pool would fail with "Too many connections".
    No blocking command runs on it (see `create_blocking_redis`), so a wait is short.
    """
    options = _options(COMMAND_TIMEOUT)
    if cluster:
        return RedisCluster.from_url(url, max_connections=4 * max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, **options)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def create_blocking_redis(url: str, *, cluster: bool = False, max_connections: int = 1024) -> Redis:
    """The client for blocking reads (XREAD BLOCK) alone, with a pool of its own.

    Its socket timeout exceeds BLOCK_MS, so a read that blocks its full time is not taken
    for a dead connection. On a single Redis the pool waits for a free connection, so
    readers beyond `max_connections` queue behind each other; a cluster client's pool
    per node does not wait, so it gets room for every reader a node can expect.
    """
    options = _options(BLOCK_MS / 1000 + 5.0)
    if cluster:
        return RedisCluster.from_url(url, max_connections=max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30, **options)
    return aioredis.Redis.from_pool(pool)
