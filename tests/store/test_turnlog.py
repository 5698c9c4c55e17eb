"""A turn's event stream and stop requests, against a real Redis, each test under its own prefix."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from personachat.store.client import Redis, create_redis
from personachat.store.keys import KeySpace
from personachat.store.turnlog import TurnLog
from tests.servers import RedisProcess

USER, SESSION = "bob", "a" * 32
LEASE_MS = 5000


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("test" + secrets.token_hex(4))


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def log(redis: Redis, keys: KeySpace) -> TurnLog:
    return TurnLog(redis, keys, 600)


async def started(redis: Redis, keys: KeySpace) -> str:
    """A turn holding its lease, with its first event stored (as an admission leaves it)."""
    turn = secrets.token_hex(8)
    await redis.set(keys.lock(USER, SESSION), turn, px=LEASE_MS)
    await redis.xadd(keys.turn(USER, SESSION, turn), {"s": 1, "d": b"e1"}, id="0-1")
    return turn


def events(*seqs: int) -> list[bytes]:
    return [f"e{seq}".encode() for seq in seqs]


async def test_append_is_safe_to_repeat_and_to_repeat_with_more_events(
    log: TurnLog, redis: Redis, keys: KeySpace
) -> None:
    turn = await started(redis, keys)
    assert await log.append(USER, SESSION, turn, 2, events(2, 3), lease_ms=LEASE_MS)
    assert await log.append(USER, SESSION, turn, 2, events(2, 3), lease_ms=LEASE_MS)  # a retry: nothing new
    # The writer did not learn that 2..3 were stored, and sends them again with 4..5.
    assert await log.append(USER, SESSION, turn, 2, events(2, 3, 4, 5), lease_ms=LEASE_MS)
    entries = await redis.xrange(keys.turn(USER, SESSION, turn))
    assert [(entry_id, fields[b"s"], fields[b"d"]) for entry_id, fields in entries] == [
        (b"0-1", b"1", b"e1"),
        (b"0-3", b"2", b"e2\ne3"),
        (b"0-5", b"4", b"e4\ne5"),
    ]
    expected = list(zip(range(1, 6), events(1, 2, 3, 4, 5), strict=True))
    assert await log.read_after(USER, SESSION, turn, 0, None) == expected
    tail = await log.tail(USER, SESSION, turn)
    assert tail is not None and (tail.last_seq, tail.ended) == (5, False)


async def test_append_renews_the_lease_and_writes_nothing_without_it(
    log: TurnLog, redis: Redis, keys: KeySpace
) -> None:
    turn = await started(redis, keys)
    await redis.pexpire(keys.lock(USER, SESSION), 50)
    assert await log.append(USER, SESSION, turn, 2, events(2), lease_ms=LEASE_MS)
    assert await redis.pttl(keys.lock(USER, SESSION)) > 1000
    assert await redis.zscore(keys.running(USER), turn) is not None
    await redis.set(keys.lock(USER, SESSION), "f" * 16)  # another turn holds the session now
    assert not await log.append(USER, SESSION, turn, 3, events(3), lease_ms=LEASE_MS)
    assert (await log.tail(USER, SESSION, turn)).last_seq == 2  # type: ignore[union-attr]


async def test_read_after_never_returns_an_event_twice_even_from_overlapping_entries(
    log: TurnLog, redis: Redis, keys: KeySpace
) -> None:
    turn = await started(redis, keys)
    key = keys.turn(USER, SESSION, turn)
    # Entries as an older writer left them: the final write repeated events 2 and 3.
    await redis.xadd(key, {"s": 2, "d": b"e2\ne3"}, id="0-3")
    await redis.xadd(key, {"s": 2, "d": b"e2\ne3\ne4"}, id="0-4")
    assert [seq for seq, _ in await log.read_after(USER, SESSION, turn, 0, None)] == [1, 2, 3, 4]  # not 1,2,3,2,3,4
    assert [seq for seq, _ in await log.read_after(USER, SESSION, turn, 2, None)] == [3, 4]
    assert await log.read_after(USER, SESSION, turn, 4, None) == []
    assert await log.tail(USER, SESSION, "0" * 16) is None


async def test_a_stop_request_is_published_and_flagged(log: TurnLog, redis: Redis) -> None:
    subscribed = asyncio.Event()
    heard: list[str] = []

    async def listen() -> None:
        async for turn_id in log.stop_requests(on_subscribed=subscribed.set):
            heard.append(turn_id)
            return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), timeout=5)
    turn = secrets.token_hex(8)
    token = await log.stop_token()
    await log.request_stop(USER, turn)
    await asyncio.wait_for(listener, timeout=5)
    assert heard == [turn]
    assert await log.stop_requested([(USER, turn), (USER, "0" * 16)]) == [True, False]
    assert await log.stop_token() != token
