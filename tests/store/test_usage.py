"""Per-user token totals in Redis, by model, under the user's hash tag."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from personachat.store.client import Redis, create_redis
from personachat.store.keys import KeySpace
from personachat.store.usage import UsageStore
from tests.servers import RedisProcess


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("usage" + secrets.token_hex(3))


async def test_usage_is_added_up_per_user_and_per_model(redis: Redis, keys: KeySpace) -> None:
    usage = UsageStore(redis, keys, ttl_seconds=3600)
    await usage.record("alice", "small", 10, 5)
    await usage.record("alice", "small", 7, 3)
    await usage.record("alice", "org/big:8b", 100, 50)
    await usage.record("bob", "small", 1, 1)
    totals = (await usage.totals("alice")).as_dict()
    assert totals == {
        "prompt_tokens": 117,
        "completion_tokens": 58,
        "turns": 3,
        "by_model": {
            "small": {"prompt_tokens": 17, "completion_tokens": 8, "turns": 2},
            "org/big:8b": {"prompt_tokens": 100, "completion_tokens": 50, "turns": 1},
        },
    }
    assert (await usage.totals("bob")).turns == 1
    assert (await usage.totals("carol")).as_dict() == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "turns": 0,
        "by_model": {},
    }
    key = keys.usage("alice")
    assert key.startswith(f"{keys.prefix}:{{alice}}:") and 0 < await redis.ttl(key) <= 3600
    assert keys.parse(key) is not None and keys.parse(key).kind == "usage"  # type: ignore[union-attr]
