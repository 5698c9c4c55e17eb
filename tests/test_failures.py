"""Every failure ends with a clear answer and a clean state: Redis down or restarting, the
service stopped (SIGTERM) or killed (SIGKILL) while answers stream."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, FakeModel, Service, chat, history, start_session
from tests.servers import RedisProcess, ServiceProcess
from tests.sse import Event, answer_text, iter_events


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis for this test alone (with an append-only file), free to stop and restart."""
    server = RedisProcess(appendonly=True).start()
    yield server
    server.cleanup()


def read_events(client: httpx.Client, method: str, url: str, count: int | None = None, **kwargs: object) -> list[Event]:
    events: list[Event] = []
    with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, response.read()
        for event in iter_events(response):
            events.append(event)
            if count is not None and len(events) == count:
                break
    return events


def test_redis_down_is_503_with_a_clear_message_and_the_service_recovers_by_itself(
    make_service: Callable[..., Service], own_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url)
    with service.client() as client:
        session_id = start_session(client)
        chat(client, session_id, "before the outage")
        own_redis.stop()
        responses = [
            client.get("/readyz"),
            client.post("/chat/start"),
            client.get("/chat/history", params={"session_id": session_id}),
            client.get("/chat/sessions"),
            client.post("/chat/stream", json={"session_id": session_id, "message": "during"}),
            client.get("/chat/stream", params={"session_id": session_id, "message": "during"}),
            client.delete(f"/chat/history/{session_id}"),
            client.post("/chat/stop", params={"session_id": session_id}),
        ]
        for response in responses:
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.json()["code"] == "store_unavailable" and "Redis" in response.json()["detail"]
            assert response.headers["retry-after"]
        assert client.get("/healthz").status_code == 200  # the process itself is alive
        own_redis.start()
        assert client.get("/readyz").status_code == 200
        chat(client, session_id, "after the outage")
        assert [m["content"] for m in history(client, session_id)["messages"] if m["role"] == "user"] == [
            "before the outage",
            "after the outage",
        ]


def test_a_redis_restart_mid_turn_ends_the_stream_clearly_and_keeps_committed_history(
    make_service: Callable[..., Service], own_redis: RedisProcess, model: FakeModel
) -> None:
    service = make_service(redis_url=own_redis.url)
    with service.client(timeout=20) as client:
        session_id = start_session(client)
        chat(client, session_id, "committed before the restart")
        events: list[Event] = []
        body = {"session_id": session_id, "message": "[[chunks=60]] [[delay_ms=25]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            for event in iter_events(response):
                events.append(event)
                if len(events) == 5:
                    own_redis.stop()
                    time.sleep(0.3)
                    own_redis.start()
        final = events[-1]
        assert final.type in ("end", "error")  # never a silent hang (the client timeout is 20 s)
        stored = history(client, session_id)
        assert stored["messages"][0]["content"] == "committed before the restart"  # the AOF kept it
        if final.type == "end":
            assert stored["total"] == 4 and stored["messages"][3]["content"] == answer_text(events)
        else:
            assert stored["total"] == 2
        assert stored["running_turn_id"] is None
        chat(client, session_id, "and the service goes on")


def service_env(redis: RedisProcess, model: FakeModel, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "REDIS_PREFIX": "test" + secrets.token_hex(4),
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": model.base_url,
        "SECRET_KEY": "process-test-secret",
        "DATA_DIR": str(tmp_path),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "LOG_LEVEL": "warning",
        **extra,
    }


@pytest.mark.slow
def test_sigterm_ends_running_turns_with_server_shutdown_and_the_next_start_is_clean(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path
) -> None:
    env = service_env(redis_server, model, tmp_path)
    service = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=service.base_url, timeout=30) as client:
            session_id = start_session(client)
            events: list[Event] = []
            body = {"session_id": session_id, "message": "[[chunks=500]] [[delay_ms=20]]"}
            with client.stream("POST", "/chat/stream", json=body) as response:
                for event in iter_events(response):
                    events.append(event)
                    if len(events) == 3:
                        service.signal(signal.SIGTERM)
            assert events[-1].type == "error" and events[-1].data["code"] == "server_shutdown"
            assert service.wait(timeout=30) == 0
            cookies = client.cookies
    finally:
        service.stop()
    lock = redis_server.client().get(f"{env['REDIS_PREFIX']}:{{{_user(cookies, env)}}}:lock:{session_id}")
    assert lock is None  # no turn stays marked running
    restarted = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=restarted.base_url, cookies=cookies, timeout=30) as client:
            assert history(client, session_id)["total"] == 0  # the cut turn stored nothing
            chat(client, session_id, "after the restart")
            assert history(client, session_id)["total"] == 2
    finally:
        restarted.stop()


@pytest.mark.slow
def test_a_killed_process_leaves_the_session_held_no_longer_than_the_turn_lease(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path
) -> None:
    env = service_env(redis_server, model, tmp_path, TURN_LEASE_SECONDS="3")
    doomed, survivor = ServiceProcess(env, ROOT).start(), ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=doomed.base_url, timeout=30) as client:
            session_id = start_session(client)
            head = read_events(
                client,
                "POST",
                "/chat/stream",
                count=3,
                json={"session_id": session_id, "message": "[[chunks=500]] [[delay_ms=20]]"},
            )
            cookies = client.cookies
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        killed_at = time.monotonic()
        with httpx.Client(base_url=survivor.base_url, cookies=cookies, timeout=30) as client:
            rest = read_events(
                client, "GET", "/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": head[-1].id}
            )
            assert rest[-1].type == "error" and rest[-1].data["code"] == "turn_lost"
            assert time.monotonic() - killed_at < 3 + 3  # the lease, plus one reader poll
            chat(client, session_id, "the session is free again")
            assert history(client, session_id)["total"] == 2
    finally:
        doomed.stop()
        survivor.stop()


def start_and_kill(env: dict[str, str]) -> tuple[str, str, str, httpx.Cookies, float]:
    """Start a long turn on a service process, read 3 events, SIGKILL the process mid-turn.

    Returns (session, another session, the last event id read, cookies, when it was killed).
    """
    doomed = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=doomed.base_url, timeout=30) as client:
            session_id, other_session = start_session(client), start_session(client)
            body = {"session_id": session_id, "message": "[[chunks=2000]] [[delay_ms=20]]"}
            head = read_events(client, "POST", "/chat/stream", count=3, json=body)
            cookies = client.cookies
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        return session_id, other_session, head[-1].id or "", cookies, time.monotonic()
    finally:
        doomed.stop()


def first_accepted(client: httpx.Client, session_id: str, deadline: float) -> tuple[float, list[int]]:
    """Send a message every 0.2 s until one is accepted; (when, the statuses seen)."""
    statuses = []
    while time.monotonic() < deadline:
        body = {"session_id": session_id, "message": "[[chunks=2]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            statuses.append(response.status_code)
            response.read()
            if response.status_code == 200:
                return time.monotonic(), statuses
        time.sleep(0.2)
    raise AssertionError(f"no message accepted in time: {statuses[-5:]}")


@pytest.mark.slow
def test_after_a_sigkill_and_a_restart_the_session_and_slot_are_free_within_the_lease(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path
) -> None:
    # The default lease (10 s); one turn at a time per user, so the dead turn's slot shows too.
    env = service_env(redis_server, model, tmp_path, MAX_CONCURRENT_TURNS_PER_USER="1")
    session_id, other_session, last_id, cookies, killed_at = start_and_kill(env)
    restarted = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=restarted.base_url, cookies=cookies, timeout=30) as client:
            asked = time.monotonic() - killed_at
            blocked = client.post("/chat/stream", json={"session_id": other_session, "message": "x"})
            if asked < 8:  # well within the dead turn's lease (a slow restart may leave no time to look)
                assert blocked.status_code == 429  # its concurrency slot is taken, for now
            rest = read_events(
                client, "GET", "/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": last_id}
            )
            lost_after = time.monotonic() - killed_at
            assert rest[-1].type == "error" and rest[-1].data["code"] == "turn_lost"  # not a hang
            asked = time.monotonic()  # the reader wrote it as the turn's final event: the next gets it at once
            again = read_events(
                client, "GET", "/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": last_id}
            )
            assert [e.data for e in again] == [rest[-1].data] and again[0].id == rest[-1].id
            assert time.monotonic() - asked < 1
            accepted, statuses = first_accepted(client, session_id, killed_at + 40)
            usable_after = accepted - killed_at
            print(f"after SIGKILL: resumer got turn_lost at {lost_after:.1f} s, session usable at {usable_after:.1f} s")
            assert usable_after < 30  # was ~600 s (TURN_TIMEOUT_SECONDS)
            assert set(statuses[:-1]) <= {409}
            chat(client, other_session, "the slot is free too")
    finally:
        restarted.stop()


@pytest.mark.slow
def test_a_stop_of_a_turn_whose_process_died_ends_it_and_frees_the_session_at_once(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path
) -> None:
    env = service_env(redis_server, model, tmp_path, TURN_LEASE_SECONDS="60")  # the lease alone: a minute
    session_id, _, last_id, cookies, killed_at = start_and_kill(env)
    restarted = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=restarted.base_url, cookies=cookies, timeout=30) as client:
            assert history(client, session_id)["running_turn_id"] is not None
            asked = time.monotonic()
            stopped = client.post("/chat/stop", params={"session_id": session_id}).json()
            took = time.monotonic() - asked
            assert stopped["stopped"] is True and stopped["turn_id"] == last_id.split(":")[0]
            rest = read_events(
                client, "GET", "/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": last_id}
            )
            assert rest[-1].type == "error" and rest[-1].data["code"] == "turn_lost"
            chat(client, session_id, "usable again")
            usable = time.monotonic() - killed_at
            print(f"stop of a dead turn took {took:.1f} s; session usable {usable:.1f} s after the kill")
            assert took < 5
            assert history(client, session_id)["total"] == 2  # the cut turn stored nothing, the new one did
    finally:
        restarted.stop()


def test_a_turn_ending_during_a_redis_outage_leaves_its_session_held_no_longer_than_its_lease(
    make_service: Callable[..., Service], own_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url, turn_lease_seconds=10)
    with service.client(timeout=20) as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": "[[chunks=20]] [[delay_ms=25]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            events = iter_events(response)
            next(events)
            own_redis.stop()  # the answer ends, and its commit gives up, while Redis is away
            final = [event for event in events if event.type != "chunk"][-1]
        assert final.type == "error" and final.data["code"] == "store_unavailable"
        time.sleep(max(0.0, 3 - 0.5))
        own_redis.start()  # an outage of ~3 s; the append-only file kept the lease
        back = time.monotonic()
        accepted, _ = first_accepted(client, session_id, back + 30)
        print(f"after a 3 s Redis outage the session was usable {accepted - back:.1f} s after Redis came back")
        assert accepted - back < 10  # was ~565 s: the lock outlived the outage
        assert history(client, session_id)["total"] == 2


def _user(cookies: httpx.Cookies, env: dict[str, str]) -> str:
    value = cookies.get("chat_identity") or ""
    return value.split(".")[0]


def test_a_turn_whose_final_write_is_refused_frees_its_session_at_once(
    make_service: Callable[..., Service], own_redis: RedisProcess
) -> None:
    service = make_service(redis_url=own_redis.url)
    raw = own_redis.client()
    with service.client(timeout=20) as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": "[[chunks=20]] [[delay_ms=25]]"}
        try:
            with client.stream("POST", "/chat/stream", json=body) as response:
                events = iter_events(response)
                next(events)
                raw.config_set("maxmemory", 1)  # Redis refuses every write that needs memory (OOM)
                final = [event for event in events if event.type != "chunk"][-1]
            assert final.type == "error"  # not a hang: the turn's own failure path ended it
            deadline = time.monotonic() + 3
            while history(client, session_id)["running_turn_id"] is not None:  # reads and DEL still work
                assert time.monotonic() < deadline, "the session stayed taken"
                time.sleep(0.05)
        finally:
            raw.config_set("maxmemory", 0)
        chat(client, session_id, "and the next message is accepted")
        assert history(client, session_id)["total"] == 2
