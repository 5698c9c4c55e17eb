"""Automatic titles (AUTO_TITLE): once per session, after its first answer, never over a
title the user set, and harmless when the model fails."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from config import Settings
from personachat.llm import ModelClient, Models, create_openai_client
from personachat.store.client import Redis, create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace
from personachat.titles import TITLE_PROMPT, Titles, clean_title
from tests.conftest import FakeModel, Service, chat, start_session
from tests.servers import RedisProcess, free_port
from tests.sse import answer_text


def title_requests(model: FakeModel) -> list[dict[str, object]]:
    return [r for r in model.requests if r["messages"][0]["content"] == TITLE_PROMPT]  # type: ignore[index]


def listed_title(client: httpx.Client, session_id: str) -> str:
    sessions = client.get("/chat/sessions").json()["sessions"]
    return str(next(s["title"] for s in sessions if s["session_id"] == session_id))


def wait_for_title(client: httpx.Client, session_id: str, unlike: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        title = listed_title(client, session_id)
        if title != unlike:
            return title
        time.sleep(0.05)
    raise AssertionError("no automatic title")


@pytest.fixture
def titled(make_service: Callable[..., Service]) -> Service:
    return make_service(auto_title=True)


def test_the_first_answer_gets_one_title_from_the_model_and_later_turns_none(titled: Service, model: FakeModel) -> None:
    with titled.client() as client:
        session_id = start_session(client)
        events = chat(client, session_id, "How do tides work?")
        title = wait_for_title(client, session_id, unlike="How do tides work?")
        assert title.startswith("Offline demo model. No real model") and len(title) <= 60
        (request,) = title_requests(model)
        prompt = request["messages"][1]["content"]  # type: ignore[index]
        assert prompt.startswith("User: How do tides work?") and answer_text(events)[:50] in prompt
        first = events[0].data["turn_id"]
        chat(client, session_id, "and the moon?")
        body = {"session_id": session_id, "message": "again", "from_turn": first}
        with client.stream("POST", "/chat/stream", json=body) as response:
            response.read()
        time.sleep(0.3)
        assert len(title_requests(model)) == 1 and listed_title(client, session_id) == title


def test_a_title_the_user_set_is_never_replaced(titled: Service, model: FakeModel) -> None:
    with titled.client() as client:
        named = start_session(client, title="Mine")
        chat(client, named, "hello")
        renamed = start_session(client)
        assert client.patch(f"/chat/sessions/{renamed}", json={"title": "Renamed"}).status_code == 200
        chat(client, renamed, "hello")
        time.sleep(0.3)
        assert title_requests(model) == []
        assert listed_title(client, named) == "Mine" and listed_title(client, renamed) == "Renamed"


def test_auto_title_is_off_with_the_offline_demo_model_and_when_set_false(tmp_path: Path) -> None:
    demo = Settings(_env_file=None, data_dir=tmp_path, auto_title=True)  # type: ignore[call-arg]
    assert demo.uses_demo_model and not demo.auto_titles
    real = Settings(_env_file=None, data_dir=tmp_path, openai_api_key="k")  # type: ignore[call-arg]
    assert real.auto_titles
    off = Settings(_env_file=None, data_dir=tmp_path, openai_api_key="k", auto_title=False)  # type: ignore[call-arg]
    assert not off.auto_titles


def test_clean_title_keeps_one_short_plain_line() -> None:
    assert clean_title('"Tides and the Moon."\nmore') == "Tides and the Moon"
    assert clean_title("**Title:** 潮汐的原理。") == "潮汐的原理"
    assert clean_title("  \n\n") == ""
    long = clean_title("word " * 40)
    assert len(long) == 60 and long.endswith("…")


# -- the store's part, and failures --------------------------------------------------------


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url)
    yield client
    await client.aclose()


def store_of(redis: Redis) -> HistoryStore:
    limits = Limits(20, 100, 3600, 2000, 600, 4, 100)
    return HistoryStore(redis, KeySpace("test" + secrets.token_hex(4)), limits)


async def first_turn(store: HistoryStore, user: str, session_id: str) -> None:
    turn = secrets.token_hex(8)
    await store.admit_turn(user, session_id, turn, role=None, default_role="a", known_roles=["a"])
    messages = [{"role": "user", "content": "first words", "turn_id": turn}, {"role": "assistant", "content": "ok"}]
    status = await store.commit_turn(
        user,
        session_id,
        turn,
        first_seq=2,
        payloads=[b'{"type":"end"}'],
        messages=messages,
        role="a",
        title="first words",
        lost_payload=b'{"type":"error"}',
    )
    assert status == "ok"


async def test_a_title_is_claimed_once_and_a_rename_meanwhile_wins(redis: Redis) -> None:
    store = store_of(redis)
    session = await store.create_session("u", "a", None)
    assert not await store.claim_auto_title("u", session.session_id)  # no first answer yet
    await first_turn(store, "u", session.session_id)
    assert await store.claim_auto_title("u", session.session_id)
    assert not await store.claim_auto_title("u", session.session_id)  # once per session
    await store.update_session("u", session.session_id, title="typed by the user")
    assert not await store.store_auto_title("u", session.session_id, "from the model")
    assert (await store.get_session("u", session.session_id)).title == "typed by the user"


async def test_a_failing_title_request_changes_nothing_and_raises_nothing(redis: Redis) -> None:
    store = store_of(redis)
    session = await store.create_session("u", "a", None)
    await first_turn(store, "u", session.session_id)
    nowhere = create_openai_client(api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2, max_retries=0)
    try:
        titles = Titles(store, Models.single(ModelClient(nowhere, "m", 2)), timeout=3)
        titles.schedule("u", session.session_id, [{"role": "user", "content": "first words"}], None)
        await titles.wait()
    finally:
        await nowhere.close()
    assert (await store.get_session("u", session.session_id)).title == "first words"
