"""Turns outlive their connection: resume by Last-Event-ID on any instance, stop, one turn at a time."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable

import httpx

from personachat.llm import ModelClient, Models, create_openai_client
from personachat.models import ModelEntry
from personachat.personas import load_catalog
from personachat.readers import TurnReaders, follow, sse_frames
from personachat.store.client import BLOCK_MS, create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace
from personachat.store.turnlog import _APPEND, TurnLog
from personachat.turns import Pace, TurnRun, TurnService
from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.faults import FaultProxy, script_sha
from tests.servers import RedisProcess, free_port
from tests.sse import Event, answer_text, collect, iter_events

SLOW = "[[chunks=40]] [[delay_ms=25]]"  # a one-second answer: w0 w1 ... w39
SLOW_TEXT = "".join(f"w{n} " for n in range(40))


def read_some(client: httpx.Client, session_id: str, message: str, count: int) -> list[Event]:
    """Start a turn, read `count` events, then drop the connection (a closed tab, a lost network)."""
    events: list[Event] = []
    with client.stream("POST", "/chat/stream", json={"session_id": session_id, "message": message}) as response:
        assert response.status_code == 200
        for event in iter_events(response):
            events.append(event)
            if len(events) == count:
                break
    return events


def resume(client: httpx.Client, session_id: str, last_event_id: str, method: str = "GET") -> list[Event]:
    headers = {"Last-Event-ID": last_event_id}
    if method == "GET":
        request = client.stream(
            "GET", "/chat/stream", params={"session_id": session_id, "message": "x"}, headers=headers
        )
    else:
        request = client.stream(
            "POST", "/chat/stream", json={"session_id": session_id, "message": "x"}, headers=headers
        )
    with request as response:
        assert response.status_code == 200, response.read()
        return collect(response)


def wait_until_idle(client: httpx.Client, session_id: str, timeout: float = 10) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = history(client, session_id)
        if stored["running_turn_id"] is None:
            return stored
        time.sleep(0.05)
    raise AssertionError("the turn did not end")


def test_a_dropped_client_loses_nothing_and_resuming_delivers_the_rest_exactly_once(
    client: httpx.Client, model: FakeModel
) -> None:
    session_id = start_session(client)
    head = read_some(client, session_id, SLOW, 5)
    rest = resume(client, session_id, head[-1].id or "", method="POST")
    events = head + rest
    turn_id = head[0].data["turn_id"]
    assert [e.id for e in events] == [f"{turn_id}:{n}" for n in range(1, len(events) + 1)]
    assert events[-1].type == "end" and answer_text(events) == SLOW_TEXT
    stored = wait_until_idle(client, session_id)
    assert [m["content"] for m in stored["messages"]] == [SLOW, SLOW_TEXT]  # type: ignore[index]
    assert len(model.requests) == 1  # the resume did not send the message again


def test_a_turn_runs_to_its_end_with_nobody_reading(client: httpx.Client) -> None:
    session_id = start_session(client)
    read_some(client, session_id, SLOW, 1)
    stored = wait_until_idle(client, session_id)
    assert stored["total"] == 2 and stored["messages"][1]["content"] == SLOW_TEXT  # type: ignore[index]


def test_a_turn_started_on_one_instance_resumes_on_another(make_service: Callable[..., Service]) -> None:
    first, second = make_service(), make_service()  # two app processes' worth, one Redis
    with first.client() as on_first:
        session_id = start_session(on_first)
        head = read_some(on_first, session_id, SLOW, 3)
        cookies = on_first.cookies
    with second.client(cookies=cookies) as on_second:
        rest = resume(on_second, session_id, head[-1].id or "")
        assert answer_text(head + rest) == SLOW_TEXT and rest[-1].type == "end"
        ids = [e.id for e in head + rest]
        assert len(ids) == len(set(ids))
        stored = wait_until_idle(on_second, session_id)
        assert stored["total"] == 2


def test_resuming_a_finished_turn_replays_it_and_after_its_end_says_no_content(client: httpx.Client) -> None:
    session_id = start_session(client)
    events = chat(client, session_id, "[[chunks=5]] [[delay_ms=20]]")  # paced: one event per chunk
    turn_id = events[0].data["turn_id"]
    replay = resume(client, session_id, f"{turn_id}:0")
    assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in events]
    tail = resume(client, session_id, events[2].id or "")
    assert [e.id for e in tail] == [e.id for e in events[3:]]
    response = client.get(
        "/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": events[-1].id or ""}
    )
    assert response.status_code == 204  # EventSource stops reconnecting
    assert history(client, session_id)["total"] == 2


def test_the_page_can_resume_the_running_turn_after_a_reload(client: httpx.Client) -> None:
    session_id = start_session(client)
    read_some(client, session_id, SLOW, 2)
    running = history(client, session_id)["running_turn_id"]
    assert running
    sessions = client.get("/chat/sessions").json()["sessions"]
    assert sessions[0]["running_turn_id"] == running
    with client.stream(
        "GET", "/chat/stream", params={"session_id": session_id, "last_event_id": f"{running}:0"}
    ) as response:
        events = collect(response)
    assert events[0].type == "start" and answer_text(events) == SLOW_TEXT


def test_a_second_message_while_a_turn_runs_is_409_and_two_racing_requests_have_one_winner(
    client: httpx.Client, model: FakeModel
) -> None:
    session_id = start_session(client)
    read_some(client, session_id, SLOW, 1)
    response = client.post("/chat/stream", json={"session_id": session_id, "message": "me too"})
    assert response.status_code == 409 and response.json()["code"] == "turn_in_progress"
    wait_until_idle(client, session_id)

    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def send(number: int) -> None:
        with httpx.Client(base_url=str(client.base_url), cookies=client.cookies, timeout=30) as racer:
            barrier.wait()
            # The winner's answer lasts a second, so every racer arrives while it runs.
            body = {"session_id": session_id, "message": f"race {number} [[chunks=20]] [[delay_ms=50]]"}
            with racer.stream("POST", "/chat/stream", json=body) as response:
                statuses.append(response.status_code)
                response.read()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * 7
    stored = wait_until_idle(client, session_id)
    assert stored["total"] == 4  # the first turn and exactly one racer


def test_stop_ends_every_reader_and_stores_the_partial_answer(make_service: Callable[..., Service]) -> None:
    first, second = make_service(), make_service()
    with first.client() as client:
        session_id = start_session(client)
        head = read_some(client, session_id, "[[chunks=400]] [[delay_ms=20]]", 4)
        cookies = client.cookies
        readers: dict[str, list[Event]] = {}

        def follow(name: str, service: Service) -> None:
            with service.client(cookies=cookies) as reader:
                readers[name] = resume(reader, session_id, head[-1].id or "")

        threads = [threading.Thread(target=follow, args=(name, s)) for name, s in (("a", first), ("b", second))]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        with second.client(cookies=cookies) as other:  # stopped through the other instance
            response = other.post("/chat/stop", params={"session_id": session_id})
        assert response.status_code == 200
        assert response.json() == {"session_id": session_id, "turn_id": head[0].data["turn_id"], "stopped": True}
        for thread in threads:
            thread.join(timeout=10)
        for events in readers.values():
            assert events[-1].type == "end" and events[-1].data["finish_reason"] == "stopped"
        stored = wait_until_idle(client, session_id)
        answer = stored["messages"][1]  # type: ignore[index]
        assert answer["stopped"] is True
        partial = answer_text(head + readers["a"])
        assert answer["content"] == partial and 0 < len(partial) < len("".join(f"w{n} " for n in range(400)))
        assert answer_text(head + readers["b"]) == partial
        chat(client, session_id, "next message works")


def test_the_number_of_running_turns_per_user_is_limited(make_service: Callable[..., Service]) -> None:
    service = make_service(max_concurrent_turns_per_user=2)
    with service.client() as client:
        sessions = [start_session(client) for _ in range(3)]
        read_some(client, sessions[0], SLOW, 1)
        read_some(client, sessions[1], SLOW, 1)
        response = client.post("/chat/stream", json={"session_id": sessions[2], "message": "third"})
        assert response.status_code == 429 and response.json()["code"] == "rate_limited"
        assert "retry-after" in response.headers
        wait_until_idle(client, sessions[0])
        wait_until_idle(client, sessions[1])
        chat(client, sessions[2], "now there is room")


def test_a_turn_is_capped_in_events_and_leaves_no_task_behind(
    make_service: Callable[..., Service], redis_server: RedisProcess
) -> None:
    service = make_service(max_turn_events=12)
    turns = service.app.state.services.turns
    with service.client() as client:
        session_id = start_session(client)
        events = chat(client, session_id, "[[chunks=50]] [[delay_ms=5]]")  # paced: one event per chunk
        assert len(events) <= 12 and events[-1].data["finish_reason"] == "length"
        stored = history(client, session_id)
        assert stored["messages"][1]["content"] == answer_text(events)  # what was sent is what is kept
        read_some(client, session_id, SLOW, 2)  # a reader that leaves early
        wait_until_idle(client, session_id)
        for other in range(3):
            chat(client, start_session(client), f"turn {other}")
    deadline = time.monotonic() + 5
    while turns.active_turns and time.monotonic() < deadline:
        time.sleep(0.05)
    assert turns.active_turns == 0
    stream_keys = list(redis_server.client().scan_iter(f"{service.settings.redis_prefix}:*:t:*"))
    assert stream_keys and all(0 < redis_server.client().ttl(key) <= 3600 for key in stream_keys)


def test_an_outage_during_a_remote_read_is_not_taken_for_a_lost_turn(redis_server: RedisProcess) -> None:
    """A reader of another instance's turn checks, between blocking reads, that the turn still
    runs; when that check cannot reach Redis the answer is "unknown": it reads on, and the
    turn's final event arrives, instead of a false `turn_lost`."""

    async def scenario() -> list[tuple[bytes, bytes]]:
        live = create_redis(redis_server.url)
        away = create_redis(f"redis://127.0.0.1:{free_port()}/0")  # where the sessions "are": down
        keys = KeySpace("outage" + secrets.token_hex(3))
        limits = Limits(20, 1000, 3600, 60_000, 60, 4, 0)
        log = TurnLog(live, keys, 60)
        store = HistoryStore(away, keys, limits)
        openai_client = create_openai_client(api_key="k", base_url="http://127.0.0.1:9/v1", timeout=1, max_retries=0)
        model = Models.single(ModelClient(openai_client, "m", 1))
        turns = TurnService(
            live, store, log, load_catalog(None, "assistant"), model,
            max_message_chars=100, turn_timeout=60, max_turn_events=100,
        )  # fmt: skip
        user, session_id, turn_id = "someone", "a" * 32, "b" * 16
        await live.set(keys.lock(user, session_id), turn_id)  # the turn's lease, held by "another instance"
        await log.append(user, session_id, turn_id, 1, [b'{"type":"start"}'], lease_ms=60_000)
        frames: list[tuple[bytes, bytes]] = []

        async def read() -> None:
            async for batch in TurnReaders(turns, store, log)._read_stored(user, session_id, turn_id, 1):
                frames.extend(batch)

        reader = asyncio.create_task(read())
        await asyncio.sleep(BLOCK_MS / 1000 + 0.7)  # one blocking read and one failed check later
        await log.append(user, session_id, turn_id, 2, [b'{"type":"end","finish_reason":"stop"}'], lease_ms=60_000)
        await asyncio.wait_for(reader, timeout=10)
        for client in (live, away):
            await client.aclose()
        await openai_client.close()
        return frames

    events = asyncio.run(scenario())
    assert events == [(b"b" * 16 + b":2", b'{"type":"end","finish_reason":"stop"}')], events  # not turn_lost


def test_a_flush_applied_but_reported_failed_never_repeats_events_to_any_reader(
    make_service: Callable[..., Service], redis_server: RedisProcess
) -> None:
    proxy = FaultProxy(redis_server.port).start()
    try:
        owner, other = make_service(redis_url=proxy.url), make_service()  # the reader's instance: no proxy
        with owner.client() as client:
            session_id = start_session(client)
            chat(client, session_id, "warm up")  # the scripts are loaded, so the next EVALSHA runs
            # The first flush runs in Redis, loses its reply, and its retries find Redis away:
            # the turn believes it failed, and writes those events again with the next ones.
            proxy.drop_reply(script_sha(_APPEND), outage=1.0)
            head = read_some(client, session_id, SLOW, 1)
            turn_id = head[0].data["turn_id"]
            with other.client(cookies=client.cookies) as remote:
                replay = resume(remote, session_id, f"{turn_id}:0")
            stored = wait_until_idle(client, session_id)
        assert proxy.dropped == 1
        assert [e.id for e in replay] == [f"{turn_id}:{n}" for n in range(1, len(replay) + 1)]  # each id once, in order
        assert replay[-1].type == "end" and answer_text(replay) == SLOW_TEXT
        assert stored["total"] == 4
    finally:
        proxy.stop()


def test_a_stop_through_another_instance_lands_at_once(make_service: Callable[..., Service]) -> None:
    owner, other = make_service(), make_service()
    deadline = time.monotonic() + 5
    while not owner.app.state.services.turns.listening.is_set():  # it subscribes as the app starts
        assert time.monotonic() < deadline
        time.sleep(0.01)
    latencies = []
    with owner.client() as client, other.client() as remote:
        session_id = start_session(client)
        remote.cookies = client.cookies
        for _ in range(5):
            body = {"session_id": session_id, "message": "[[chunks=400]] [[delay_ms=20]]"}
            with client.stream("POST", "/chat/stream", json=body) as response:
                events = iter_events(response)
                for _ in range(3):
                    next(events)
                asked = time.monotonic()
                stopper = threading.Thread(
                    target=remote.post, args=("/chat/stop",), kwargs={"params": {"session_id": session_id}}
                )
                stopper.start()
                final = [event for event in events if event.type != "chunk"][-1]
                latencies.append(time.monotonic() - asked)
                stopper.join(timeout=10)
            assert final.type == "end" and final.data["finish_reason"] == "stopped"
            wait_until_idle(client, session_id)
    latencies.sort()
    median, worst = latencies[2] * 1000, latencies[-1] * 1000
    print(f"stop latency through another instance: median {median:.0f} ms, max {worst:.0f} ms")
    assert latencies[2] < 0.1  # pushed, not found by the 1 s fallback poll


async def test_while_the_process_is_busy_chunks_wait_together_for_their_reader_but_never_the_first() -> None:
    persona = load_catalog(None, "assistant").get("assistant")
    pace = Pace()
    run = TurnRun("c" * 16, "someone", "s" * 32, persona, ModelEntry("m", "openai", "m", 8192), pace=pace)
    writes: list[bytes] = []

    async def read() -> None:
        async for frames in sse_frames(follow(run)):
            writes.append(frames)

    reader = asyncio.create_task(read())
    run.append({"type": "start"})
    await asyncio.sleep(0.01)
    pace.hold = 0.2  # what the flusher sets while the process is busy
    run.append_chunk("first ")
    await asyncio.sleep(0.01)
    assert len(writes) == 2  # the start, and the first chunk at once (time to first token)
    run.append_chunk("second ")
    run.append_chunk("third ")
    await asyncio.sleep(0.05)
    assert len(writes) == 2  # held...
    await asyncio.sleep(0.25)
    assert writes[2].count(b"id: ") == 2  # ...and sent together, each event with its own id
    run.append_chunk("fourth ")
    run.append({"type": "end"})  # the final event never waits, nor what it follows
    run.finish()
    await asyncio.wait_for(reader, timeout=1)
    assert [frame.count(b"id: ") for frame in writes] == [1, 1, 2, 2]
    assert b"".join(writes).count(b"data: ") == 6
