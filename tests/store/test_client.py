"""The Redis clients: every "store unavailable" failure is a clean 503 or `error` event, and
blocking reads never make commands wait."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from personachat.errors import StoreUnavailable
from personachat.store.client import (
    BLOCK_MS,
    UNAVAILABLE,
    UNAVAILABLE_DETAILS,
    create_blocking_redis,
    create_redis,
    store_errors,
)
from personachat.store.keys import KeySpace
from personachat.store.turnlog import TurnLog
from tests.conftest import Service, chat, history, start_session
from tests.servers import RedisProcess, free_port
from tests.sse import Event, iter_events

SLOW = "[[chunks=80]] [[delay_ms=25]]"  # a two-second answer


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis for this test alone, free to be reconfigured."""
    server = RedisProcess().start()
    yield server
    server.cleanup()


@pytest.fixture
def other_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.cleanup()


def assert_503(response: httpx.Response, words: str) -> None:
    assert response.status_code == 503, (response.request.url, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"code", "detail"} and body["code"] == "store_unavailable", body
    assert words in body["detail"] and response.headers["retry-after"]


def stream_while(client: httpx.Client, session_id: str, after_events: int, action: Callable[[], None]) -> list[Event]:
    """Send a slow message, run `action` once `after_events` events arrived, read to the end."""
    events: list[Event] = []
    with client.stream("POST", "/chat/stream", json={"session_id": session_id, "message": SLOW}) as response:
        assert response.status_code == 200, response.read()
        for event in iter_events(response):
            events.append(event)
            if len(events) == after_events:
                action()
    return events


def test_redis_out_of_memory_is_503_and_a_final_error_event_mid_stream(
    make_service: Callable[..., Service], own_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url)
    admin = own_redis.client()
    with service.client(timeout=20) as client:
        session_id = start_session(client)
        chat(client, session_id, "stored before memory ran out")
        idle_session = start_session(client)

        def run_out_of_memory() -> None:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)

        events = stream_while(client, session_id, 3, run_out_of_memory)
        final = events[-1]
        assert final.type == "error" and final.data["code"] == "store_unavailable", final.data
        assert_503(client.post("/chat/start"), "memory")
        assert_503(client.post("/chat/stream", json={"session_id": idle_session, "message": "x"}), "memory")
        admin.config_set("maxmemory", 0)
        stuck_locks = admin.keys("*:lock:*")  # a lock the failed turn could not release while full
        if stuck_locks:
            admin.delete(*stuck_locks)
        chat(client, session_id, "memory is back")
        assert history(client, session_id)["total"] == 4


def test_a_read_only_redis_after_a_failover_is_503_and_a_final_error_event_mid_stream(
    make_service: Callable[..., Service], own_redis: RedisProcess, other_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url)
    admin = own_redis.client()
    with service.client(timeout=20) as client:
        session_id = start_session(client)

        def demote() -> None:  # what a failover does to the old primary
            admin.replicaof("127.0.0.1", other_redis.port)

        events = stream_while(client, session_id, 3, demote)
        final = events[-1]
        assert final.type == "error" and final.data["code"] == "store_unavailable", final.data
        assert_503(client.post("/chat/start"), "read-only")
        admin.replicaof("NO", "ONE")
        start_session(client)  # writable again: the service recovers by itself


def test_many_blocked_readers_do_not_delay_commands(own_redis: RedisProcess) -> None:
    """Readers resuming turns of another instance block in XREAD; commands must not queue behind them."""

    async def scenario() -> float:
        pool_size = 8
        redis = create_redis(own_redis.url, max_connections=pool_size)
        blocking = create_blocking_redis(own_redis.url, max_connections=4 * pool_size)
        log = TurnLog(redis, KeySpace("blocked"), 60, blocking)
        turn = "0123456789abcdef"
        readers = [
            asyncio.create_task(log.read_after(f"user{n}", "0" * 32, turn, 0, BLOCK_MS)) for n in range(3 * pool_size)
        ]
        await asyncio.sleep(0.3)  # every reader is blocked in XREAD now
        started = time.monotonic()
        # Two commands on the command pool (the turn holds no lease, so nothing is written).
        assert await log.append("someone", "1" * 32, turn, 1, [b'{"type":"start"}'], lease_ms=1_000) is False
        assert await log.tail("someone", "1" * 32, turn) is None
        elapsed = time.monotonic() - started
        assert not any(reader.done() for reader in readers)
        assert await asyncio.gather(*readers) == [[]] * len(readers)  # they time out, empty
        await redis.aclose()
        await blocking.aclose()
        return elapsed

    elapsed = asyncio.run(scenario())
    # On the shared pool the commands waited for a blocked read to time out (BLOCK_MS).
    assert elapsed < 0.5, elapsed


def test_the_unavailable_tuple_is_the_translation_table() -> None:
    assert list(UNAVAILABLE) == list(UNAVAILABLE_DETAILS)


def test_a_bug_stays_a_bug_and_a_refusal_of_the_server_is_unavailable(own_redis: RedisProcess) -> None:
    """A command Redis refuses for its own state becomes StoreUnavailable; a wrong command does not."""

    async def scenario() -> None:
        redis = create_redis(own_redis.url)
        await redis.set("a-string", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"), store_errors():
            await redis.lpush("a-string", "y")
        with pytest.raises(StoreUnavailable, match="disk"), store_errors():
            raise ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable to persist")
        await redis.aclose()
        dead = create_redis(f"redis://127.0.0.1:{free_port()}/0")
        with pytest.raises(StoreUnavailable, match="unreachable"), store_errors():
            await dead.ping()
        await dead.aclose()

    asyncio.run(scenario())


# -- what an outage leaves behind -------------------------------------------------------------


def test_a_session_rebuilt_after_redis_lost_its_data_has_a_creation_time(
    make_service: Callable[..., Service], own_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url)
    with service.client(timeout=20) as client:
        session_id = start_session(client)
        events = stream_while(client, session_id, 3, lambda: own_redis.client().flushall())  # the data is lost
        assert events[-1].type in ("end", "error")
        sessions = client.get("/chat/sessions").json()["sessions"]
        # Whether the commit brings the session back or not, a listed session says when it began.
        assert all(session["created_at"] for session in sessions), sessions


def test_an_outage_mid_turn_leaves_no_task_exception_unretrieved(
    make_service: Callable[..., Service], own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(redis_url=own_redis.url)
    with service.client(timeout=20) as client:
        for _ in range(2):
            session_id = start_session(client)  # (this Redis keeps nothing across a restart)
            events = stream_while(client, session_id, 3, own_redis.stop)
            assert events[-1].data["code"] == "store_unavailable"
            own_redis.start()
            time.sleep(0.5)  # the turns' background writes are over
    gc.collect()  # asyncio reports an unretrieved exception when its task is collected
    unretrieved = [record for record in caplog.records if "never retrieved" in record.getMessage()]
    assert unretrieved == []


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ClusterDownError("CLUSTERDOWN The cluster is down"), "down"),
        (MasterDownError("MASTERDOWN Link with MASTER is down"), "down"),
        (TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), "resharding"),
        (MovedError("3999 127.0.0.1:6381"), "redirecting"),
        (
            RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"),
            "Cluster",
        ),
        (MaxConnectionsError("Too many connections"), "unreachable"),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "replicas"),
    ],
)
def test_cluster_and_replication_refusals_are_in_the_table(error: Exception, words: str) -> None:
    """The refusals a test cannot cheaply provoke on a real cluster, raised as redis-py raises them."""
    with pytest.raises(StoreUnavailable, match=words), store_errors():
        raise error


def test_cluster_usage_errors_stay_bugs() -> None:
    with pytest.raises(RedisClusterException), store_errors():
        raise RedisClusterException("EVAL - all keys must map to the same key slot")


def test_clients_resuming_remote_turns_do_not_delay_turns_on_that_instance(
    make_service: Callable[..., Service],
) -> None:
    """Twelve clients follow, from instance B, a turn running on A; B's command pool has room
    for four. B must still admit, run and commit another turn at once."""
    running_on_a = make_service(upstream_timeout_seconds=30)
    b = make_service(redis_max_connections=4)
    with running_on_a.client() as client_a:
        session_id, other_session = start_session(client_a), start_session(client_a)
        head: list[Event] = []
        with client_a.stream(
            "POST", "/chat/stream", json={"session_id": session_id, "message": "[[chunks=5]] [[hang_after=1]]"}
        ) as response:
            for event in iter_events(response):
                head.append(event)
                if len(head) == 2:
                    break
        cookies = client_a.cookies
    time.sleep(0.5)  # the turn's events are flushed to Redis
    ended: list[str] = []

    def follow_from_b() -> None:
        with b.client(cookies=cookies) as client:
            params = {"session_id": session_id, "last_event_id": head[-1].id}
            with client.stream("GET", "/chat/stream", params=params) as response:
                ended.extend(event.type for event in iter_events(response) if event.type in ("end", "error"))

    readers = [threading.Thread(target=follow_from_b) for _ in range(12)]
    for reader in readers:
        reader.start()
    time.sleep(1.0)  # every reader is blocked in XREAD on B
    with b.client(cookies=cookies) as client_b:
        started = time.monotonic()
        events = chat(client_b, other_session, "a quick one")
        elapsed = time.monotonic() - started
        assert events[-1].type == "end"
        client_b.post("/chat/stop", params={"session_id": session_id})
    for reader in readers:
        reader.join(timeout=15)
    assert ended == ["end"] * len(readers)  # each follower got the stopped turn's end
    assert elapsed < 1.0, elapsed
