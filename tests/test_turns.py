"""What a turn sends to the model and what it stores: the prompt window, personas, memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from config import Settings
from main import create_app
from personachat.turns import TurnRequest, _cancel
from tests.conftest import FakeModel, Service, chat, history, start_session, write_models_file
from tests.servers import RedisProcess
from tests.sse import iter_events

TEACHER_PROMPT_START = "You are a patient, encouraging teacher."


def test_the_prompt_after_25_turns_is_system_plus_last_20_messages_plus_the_new_one(
    client: httpx.Client, model: FakeModel
) -> None:
    session_id = start_session(client, "teacher")
    answers = []
    for turn in range(25):
        events = chat(client, session_id, f"message {turn}")
        answers.append("".join(e.data["content"] for e in events if e.type == "chunk"))
    chat(client, session_id, "message 25")
    prompt = model.requests[-1]["messages"]
    assert len(prompt) == 22
    assert prompt[0]["role"] == "system" and prompt[0]["content"].startswith(TEACHER_PROMPT_START)
    expected = []
    for turn in range(15, 25):  # the last 20 stored messages: turns 15..24, oldest first
        expected += [
            {"role": "user", "content": f"message {turn}"},
            {"role": "assistant", "content": answers[turn]},
        ]
    assert prompt[1:21] == expected
    assert prompt[21] == {"role": "user", "content": "message 25"}
    assert history(client, session_id)["total"] == 52  # history keeps more than the window


def test_the_first_prompt_is_just_the_system_prompt_and_the_message(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client, "programmer")
    chat(client, session_id, "hello")
    prompt = model.requests[-1]["messages"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "senior software engineer" in prompt[0]["content"]
    assert model.requests[-1]["model"] == "fake-model"
    assert model.requests[-1]["temperature"] == 0.2  # the programmer persona pins its temperature


def test_the_history_window_is_a_setting(make_service: Callable[..., Service], model: FakeModel) -> None:
    service = make_service(history_window=4)
    with service.client() as client:
        session_id = start_session(client)
        for turn in range(4):
            chat(client, session_id, f"m{turn}")
        assert len(model.requests[-1]["messages"]) == 1 + 4 + 1
        assert model.requests[-1]["messages"][1]["content"] == "m1"


def test_personas_change_the_system_prompt_and_a_role_switch_sticks(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client, "assistant")
    events = chat(client, session_id, "hi")
    assert events[0].data["role"] == "assistant"
    assert model.requests[-1]["messages"][0]["content"].startswith("You are a helpful, honest assistant")
    events = chat(client, session_id, "teach me", role="teacher")
    assert events[0].data["role"] == "teacher"
    assert model.requests[-1]["messages"][0]["content"].startswith(TEACHER_PROMPT_START)
    assert "Persona: *You are a patient, encouraging teacher.*" in "".join(
        e.data["content"] for e in events if e.type == "chunk"
    )
    chat(client, session_id, "and again")  # no role given: the session's persona is now the teacher
    assert model.requests[-1]["messages"][0]["content"].startswith(TEACHER_PROMPT_START)
    stored = history(client, session_id)
    assert stored["role"] == "teacher"
    assert [m.get("persona") for m in stored["messages"] if m["role"] == "assistant"] == [
        "assistant",
        "teacher",
        "teacher",
    ]


def test_a_roles_file_adds_and_overrides_personas_with_model_and_temperature(
    make_service: Callable[..., Service], model: FakeModel, tmp_path: Path
) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text(
        "roles:\n"
        "  pirate:\n"
        "    name: Pirate\n"
        "    description: Talks like a pirate.\n"
        "    system_prompt: You are a pirate. Answer like one.\n"
        "    model: pirate-model\n"
        "    temperature: 1.3\n"
        "  teacher:\n"
        "    name: Strict teacher\n"
        "    description: Overrides the preset.\n"
        "    system_prompt: You are a strict teacher.\n"
        "default_role: pirate\n",
        encoding="utf-8",
    )
    models = write_models_file(tmp_path / "models.yaml", model.base_url, "fake-model", "pirate-model")
    service = make_service(roles_file=roles, models_file=models)
    with service.client() as client:
        body = client.get("/roles").json()
        assert body["default_role"] == "pirate"
        names = {role["key"]: role["name"] for role in body["roles"]}
        assert names["pirate"] == "Pirate" and names["teacher"] == "Strict teacher" and "programmer" in names
        session_id = start_session(client)
        chat(client, session_id, "ahoy")
        request = model.requests[-1]
        assert request["model"] == "pirate-model" and request["temperature"] == 1.3
        assert request["messages"][0]["content"] == "You are a pirate. Answer like one."


def test_history_is_capped_at_history_max_and_expires(
    make_service: Callable[..., Service], redis_server: RedisProcess
) -> None:
    service = make_service(history_max=6, history_ttl_seconds=3600)
    with service.client() as client:
        session_id = start_session(client)
        for turn in range(5):
            chat(client, session_id, f"m{turn}")
        messages = history(client, session_id)["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["m2", "m3", "m4"]
    redis = redis_server.client()
    keys = list(redis.scan_iter(f"{service.settings.redis_prefix}:*"))
    assert keys
    for key in keys:
        ttl = redis.ttl(key)
        assert 0 < ttl <= 3600, (key, ttl)  # every key of the service expires


async def test_cancel_swallows_the_tasks_cancellation_but_not_one_aimed_at_its_caller() -> None:
    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a clean-up that takes a while
            raise

    went_on: list[bool] = []

    async def caller() -> None:
        task = asyncio.create_task(slow_to_end())
        await asyncio.sleep(0)
        await _cancel(task)  # the caller is cancelled while it waits here
        went_on.append(True)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert went_on == []

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    await _cancel(task)  # only the task was cancelled: the caller goes on
    assert task.cancelled()


def test_a_turn_longer_than_its_lease_keeps_the_session_by_renewing_it(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(turn_lease_seconds=1)
    with service.client() as client:
        session_id = start_session(client)
        # 2.5 s of silence from the model (no events to flush: the renewals alone keep the lease).
        body = {"session_id": session_id, "message": "[[first_delay_ms=2500]] [[chunks=3]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            events = iter_events(response)
            next(events)
            time.sleep(1.8)
            second = client.post("/chat/stream", json={"session_id": session_id, "message": "me too"})
            assert second.status_code == 409  # still held, well after one lease
            rest = list(events)
        assert rest[-1].type == "end"
        stored = history(client, session_id)
        assert stored["total"] == 2 and stored["messages"][1]["content"] == "w0 w1 w2 "


def test_a_bug_in_one_flush_does_not_end_the_flusher_that_renews_every_lease(
    make_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(turn_lease_seconds=1)
    log = service.app.state.services.turns._log
    append_many, calls = log.append_many, []

    async def buggy_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the first flush")
        return await append_many(*args, **kwargs)

    log.append_many = buggy_once  # the fault: the one flusher's write raises once
    with service.client() as client:
        session_id = start_session(client)
        # 2.5 s with one lease of 1 s: only the flusher's renewals after the failure keep it.
        events = chat(client, session_id, "[[first_delay_ms=2500]] [[chunks=3]]")
        assert events[-1].type == "end", events[-1]
        assert len(calls) > 2 and "flushing the running turns failed" in caplog.text
        assert history(client, session_id)["messages"][1]["content"] == "w0 w1 w2 "


async def test_a_turn_cancelled_before_it_began_ends_its_readers_and_frees_its_session(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):  # the app's own wiring, on this event loop
        services = app.state.services
        session = await services.store.create_session("carol", "assistant", None)
        run = await services.turns.start(TurnRequest("carol", session.session_id, "hello"))
        (task,) = [task for task in asyncio.all_tasks() if task.get_name() == f"turn-{run.turn_id}"]
        task.cancel()  # before its first step: none of its own clean-up can run
        deadline = time.monotonic() + 5
        while (await services.store.get_session("carol", session.session_id)).running_turn_id is not None:
            assert time.monotonic() < deadline, "the session stayed taken"
            await asyncio.sleep(0.02)
        assert run.finished and orjson.loads(run.payloads[-1])["code"] == "server_shutdown"
        assert services.turns.active_turns == 0


def test_a_turn_that_loses_its_lease_stores_nothing_and_says_so(
    client: httpx.Client, service: Service, redis_server: RedisProcess
) -> None:
    session_id = start_session(client)
    body = {"session_id": session_id, "message": "[[chunks=80]] [[delay_ms=25]]"}
    with client.stream("POST", "/chat/stream", json=body) as response:
        events = iter_events(response)
        next(events)
        # Its lease is gone (it ran out while the process stalled, and another turn may take
        # the session): the turn must notice at its next write and end without storing.
        (lock,) = redis_server.client().scan_iter(f"{service.settings.redis_prefix}:*:lock:{session_id}")
        redis_server.client().delete(lock)
        final = [event for event in events if event.type != "chunk"][-1]
    assert final.type == "error" and final.data["code"] == "turn_lost"
    stored = history(client, session_id)
    assert stored["total"] == 0 and stored["running_turn_id"] is None
    chat(client, session_id, "the session goes on")
