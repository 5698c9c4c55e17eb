"""The persona store (store/personas.py) on a real Redis and on a real 3-primary Redis Cluster:
the per-user hash in the user's slot, the limit under concurrent creates, replace keeping
created_at, delete, the TTL; and the service on the cluster with personas of many users."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import key_slot

from personachat.store.client import Redis, create_redis
from personachat.store.keys import KeySpace
from personachat.store.personas import PersonaStore
from tests.conftest import Service, chat, start_session
from tests.servers import RedisProcess
from tests.store.test_cluster import RedisCluster


@pytest.fixture(scope="module")
def persona_cluster() -> Iterator[RedisCluster]:
    server = RedisCluster()
    try:
        yield server.start()
    finally:
        server.stop()


def record(key: str, name: str = "P") -> dict[str, Any]:
    return {
        "key": key,
        "name": name,
        "system_prompt": "You are P.",
        "description": "",
        "welcome_message": "",
        "model": None,
        "temperature": 0.5,
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
    }


async def exercise(redis: Redis, prefix: str) -> None:
    keys = KeySpace(prefix)
    store = PersonaStore(redis, keys, ttl_seconds=600)
    users = [f"user{n}" for n in range(6)]
    # Twenty creates racing for five places, per user, all users at once.
    for user in users:
        results = await asyncio.gather(*(store.create(user, record(f"u-{n:012x}"), 5) for n in range(20)))
        assert sorted(results).count("ok") == 5 and results.count("full") == 15
        assert await store.count(user) == 5
    user = users[0]
    listed = await store.list(user)
    assert len(listed) == 5 and all(item["temperature"] == 0.5 for item in listed)
    first = listed[0]["key"]
    assert await store.create(user, record(first), 100) == "exists"

    changed = {**record(first, "Renamed"), "created_at": "", "updated_at": "2026-02-02T00:00:00.000Z"}
    stored = await store.replace(user, changed)
    assert stored is not None and stored["name"] == "Renamed" and stored["model"] is None
    assert stored["created_at"] == "2026-01-01T00:00:00.000Z"
    assert await store.get(user, first) == stored
    assert await store.replace(user, record("u-ffffffffffff")) is None
    assert await store.get(user, "u-ffffffffffff") is None
    # The same key in another user's hash is another persona.
    assert await store.create(users[1], record(first), 100) in ("ok", "exists")
    other = await store.get(users[1], first)
    assert other is not None and other["name"] == "P"

    assert await store.delete(user, first) is True and await store.delete(user, first) is False
    assert 0 < await redis.ttl(keys.personas(user)) <= 600
    assert await store.delete_all(user) == 4 and await store.list(user) == []
    assert await redis.exists(keys.personas(user)) == 0


def run_on(url: str, cluster: bool) -> None:
    async def main() -> None:
        redis = create_redis(url, cluster=cluster)
        try:
            await redis.ping()
            await exercise(redis, "test" + secrets.token_hex(4))
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_the_store_on_one_redis(redis_server: RedisProcess) -> None:
    run_on(redis_server.url, cluster=False)


def test_the_store_on_a_three_primary_cluster(persona_cluster: RedisCluster) -> None:
    run_on(persona_cluster.url, cluster=True)


def test_a_users_personas_share_the_slot_of_their_sessions() -> None:
    keys = KeySpace("chat")
    for user in ("alice", "bob", "anon-0123", "x@y.z"):
        assert key_slot(keys.personas(user).encode()) == key_slot(keys.sessions(user).encode())


def test_the_service_on_the_cluster_with_personas_of_many_users(
    persona_cluster: RedisCluster, make_service: Callable[..., Service]
) -> None:
    service = make_service(redis_url=persona_cluster.url, redis_cluster=True)
    users = [service.client() for _ in range(9)]
    try:
        for number, user in enumerate(users):
            made = user.post("/roles", json={"name": f"Own {number}", "system_prompt": f"You are number {number}."})
            assert made.status_code == 201, made.text
            key = made.json()["key"]
            session_id = start_session(user, key)
            events = chat(user, session_id, "hello [[chunks=2]]")
            assert events[0].data["role"] == key and events[-1].type == "end"
            assert user.put(f"/roles/{key}", json={"name": "Renamed", "system_prompt": "p"}).status_code == 200
            assert [r["key"] for r in user.get("/roles").json()["roles"]][-1] == key
            card = user.get(f"/roles/{key}/card").json()
            assert user.post("/roles/import", json=card).status_code == 201
            assert user.delete(f"/roles/{key}").status_code == 200
            assert chat(user, session_id, "again [[chunks=1]]")[0].data["role"] == "assistant"
        counts = persona_cluster.keys_per_primary(service.settings.redis_prefix)
        assert all(count > 0 for count in counts), counts
    finally:
        for user in users:
            user.close()
