"""Rewriting the conversation (`from_turn`), sends that are safe to repeat
(`client_message_id`) and PATCH /chat/sessions/{id}: real Redis, real server, the fake
model's recorded prompts."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from personachat.store.client import create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace
from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.servers import RedisProcess
from tests.sse import Event, answer_text, collect, iter_events

LONG = "[[chunks=80]] [[delay_ms=25]]"  # about 2 s of answer


def send(client: httpx.Client, session_id: str, message: str, **fields: Any) -> list[Event]:
    with client.stream("POST", "/chat/stream", json={"session_id": session_id, "message": message, **fields}) as r:
        assert r.status_code == 200, r.read()
        return collect(r)


def turn_of(events: list[Event]) -> str:
    return str(events[0].data["turn_id"])


def contents(client: httpx.Client, session_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in history(client, session_id)["messages"]]


def three_turns(client: httpx.Client) -> tuple[str, list[str], list[str]]:
    session_id = start_session(client)
    turns, answers = [], []
    for text in ("one", "two", "three"):
        events = chat(client, session_id, text)
        turns.append(turn_of(events))
        answers.append(answer_text(events))
    return session_id, turns, answers


# -- from_turn ---------------------------------------------------------------------------


def test_regenerate_replaces_the_last_turn_and_its_prompt_is_the_history_before_it(
    client: httpx.Client, model: FakeModel
) -> None:
    session_id, turns, answers = three_turns(client)
    events = send(client, session_id, "three", from_turn=turns[2])
    assert events[-1].type == "end" and turn_of(events) != turns[2]
    prompt = model.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "one"),
        ("assistant", answers[0]),
        ("user", "two"),
        ("assistant", answers[1]),
        ("user", "three"),
    ]
    stored = history(client, session_id)["messages"]
    assert [m["content"] for m in stored] == ["one", answers[0], "two", answers[1], "three", answer_text(events)]
    assert {m["turn_id"] for m in stored[4:]} == {turn_of(events)}


def test_edit_of_an_earlier_message_removes_every_later_one(client: httpx.Client, model: FakeModel) -> None:
    session_id, turns, answers = three_turns(client)
    events = send(client, session_id, "TWO, edited", from_turn=turns[1])
    assert [m["content"] for m in model.requests[-1]["messages"][1:]] == ["one", answers[0], "TWO, edited"]
    assert contents(client, session_id) == [
        ("user", "one"),
        ("assistant", answers[0]),
        ("user", "TWO, edited"),
        ("assistant", answer_text(events)),
    ]
    # The first turn too: the prompt is the system prompt and the new message alone.
    events = send(client, session_id, "from scratch", from_turn=turns[0])
    assert [m["role"] for m in model.requests[-1]["messages"]] == ["system", "user"]
    assert contents(client, session_id) == [("user", "from scratch"), ("assistant", answer_text(events))]


def test_an_unknown_or_foreign_from_turn_is_404_turn_not_found_and_changes_nothing(
    client: httpx.Client, service: Service
) -> None:
    session_id, turns, _ = three_turns(client)
    other = start_session(client)
    other_turn = turn_of(chat(client, other, "elsewhere"))
    before = contents(client, session_id)
    for from_turn in ("0123456789abcdef", other_turn, "not-a-turn"):
        response = client.post("/chat/stream", json={"session_id": session_id, "message": "x", "from_turn": from_turn})
        assert response.status_code == 404 and response.json()["code"] == "turn_not_found", from_turn
    response = client.get("/chat/stream", params={"session_id": session_id, "message": "x", "from_turn": other_turn})
    assert response.status_code == 404 and response.json()["code"] == "turn_not_found"
    with service.client() as mallory:  # another user: the session itself is not theirs
        response = mallory.post("/chat/stream", json={"session_id": session_id, "message": "x", "from_turn": turns[0]})
        assert response.status_code == 404 and response.json()["code"] == "session_not_found"
    assert contents(client, session_id) == before


def test_a_regenerate_while_a_turn_runs_is_409(client: httpx.Client, service: Service) -> None:
    session_id, turns, _ = three_turns(client)
    body = {"session_id": session_id, "message": LONG}
    with client.stream("POST", "/chat/stream", json=body) as running:
        events = iter_events(running)
        next(events)
        with service.client(cookies=client.cookies) as again:
            response = again.post(
                "/chat/stream", json={"session_id": session_id, "message": "x", "from_turn": turns[2]}
            )
            assert response.status_code == 409 and response.json()["code"] == "turn_in_progress"
        assert [event.type for event in events][-1] == "end"


@pytest.mark.parametrize("failure", ["[[status=500]]", "[[error_after=3]]", "[[cut_after=2]]"])
def test_a_regenerate_whose_model_fails_loses_nothing(client: httpx.Client, failure: str) -> None:
    session_id, turns, _ = three_turns(client)
    before = history(client, session_id)["messages"]
    events = send(client, session_id, failure, from_turn=turns[1])
    assert events[-1].type == "error"
    assert history(client, session_id)["messages"] == before


def test_a_stopped_regenerate_stores_its_partial_answer_in_place_of_the_old_turn(
    client: httpx.Client, service: Service
) -> None:
    session_id, turns, answers = three_turns(client)
    body = {"session_id": session_id, "message": LONG, "from_turn": turns[2]}
    with client.stream("POST", "/chat/stream", json=body) as response:
        events = iter_events(response)
        seen = [next(events) for _ in range(4)]  # start and three chunks
        with service.client(cookies=client.cookies) as other:
            assert other.post("/chat/stop", params={"session_id": session_id}).json()["stopped"] is True
        seen += list(events)
    assert seen[-1].data["finish_reason"] == "stopped"
    stored = history(client, session_id)["messages"]
    assert [m["content"] for m in stored[:4]] == ["one", answers[0], "two", answers[1]]
    assert stored[4]["content"] == LONG and stored[5]["stopped"] is True
    assert stored[5]["content"] == answer_text(seen) and len(stored) == 6


# -- client_message_id -------------------------------------------------------------------


def test_a_repeated_send_after_its_turn_replays_it_and_starts_nothing(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client)
    first = send(client, session_id, "hello", client_message_id="msg-1")
    asked = len(model.requests)
    again = send(client, session_id, "hello", client_message_id="msg-1")
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in first]
    # GET, as an EventSource would, replays it too.
    params = {"session_id": session_id, "message": "hello", "client_message_id": "msg-1"}
    with client.stream("GET", "/chat/stream", params=params) as response:
        assert [e.id for e in collect(response)] == [e.id for e in first]
    assert len(model.requests) == asked
    assert history(client, session_id)["total"] == 2


def test_a_repeated_send_during_its_turn_follows_it_live_from_its_start(
    client: httpx.Client, service: Service, model: FakeModel
) -> None:
    session_id = start_session(client)
    body = {"session_id": session_id, "message": LONG, "client_message_id": "retry_me"}
    with client.stream("POST", "/chat/stream", json=body) as response:
        events = iter_events(response)
        start, chunk = next(events), next(events)
        with service.client(cookies=client.cookies) as retry:  # the client lost its connection, say
            repeated = send(retry, session_id, LONG, client_message_id="retry_me")
        original = [start, chunk, *events]
    assert repeated[0].id == f"{start.data['turn_id']}:1" and repeated[-1].type == "end"
    assert answer_text(repeated) == answer_text(original) and original[-1].type == "end"
    assert len(model.requests) == 1
    assert history(client, session_id)["total"] == 2


def test_the_same_id_in_another_session_is_a_new_turn(client: httpx.Client, model: FakeModel) -> None:
    first_session, second_session = start_session(client), start_session(client)
    first = send(client, first_session, "hello", client_message_id="same")
    second = send(client, second_session, "hello", client_message_id="same")
    assert turn_of(first) != turn_of(second) and len(model.requests) == 2
    assert history(client, second_session)["total"] == 2


def test_a_refused_send_does_not_bind_its_id(client: httpx.Client) -> None:
    session_id, turns, _ = three_turns(client)
    body = {"session_id": session_id, "message": "x", "from_turn": "0123456789abcdef", "client_message_id": "c1"}
    assert client.post("/chat/stream", json=body).status_code == 404
    events = send(client, session_id, "x", client_message_id="c1")
    assert events[-1].type == "end" and turn_of(events) not in turns


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "ü", "a.b"])
def test_a_malformed_client_message_id_is_422(client: httpx.Client, bad: str) -> None:
    session_id = start_session(client)
    response = client.post("/chat/stream", json={"session_id": session_id, "message": "x", "client_message_id": bad})
    assert response.status_code == 422 and response.json()["code"]
    params = {"session_id": session_id, "message": "x", "client_message_id": bad}
    assert client.get("/chat/stream", params=params).status_code == 422
    assert history(client, session_id)["total"] == 0


# -- PATCH /chat/sessions/{id} -----------------------------------------------------------


def test_patch_renames_and_changes_persona_and_model(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client)
    chat(client, session_id, "first message")
    response = client.patch(f"/chat/sessions/{session_id}", json={"title": "  My chat  "})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["title"] == "My chat" and summary["session_id"] == session_id and summary["messages"] == 2
    summary = client.patch(f"/chat/sessions/{session_id}", json={"role": "teacher", "model": "other-model"}).json()
    assert summary["role"] == "teacher" and summary["model"] == "other-model" and summary["title"] == "My chat"
    listed = client.get("/chat/sessions").json()["sessions"][0]
    assert listed["title"] == "My chat" and listed["role"] == "teacher"
    chat(client, session_id, "and now?")
    assert model.requests[-1]["messages"][0]["content"].startswith("You are a patient, encouraging teacher.")


@pytest.mark.parametrize(
    ("body", "status"),
    [({"title": ""}, 422), ({"title": "   "}, 422), ({"title": "x" * 201}, 422), ({"role": "nope"}, 400),
     ({"model": ""}, 422), ({"other": 1}, 422)],
)  # fmt: skip
def test_patch_refuses_bad_bodies(client: httpx.Client, body: dict[str, Any], status: int) -> None:
    session_id = start_session(client)
    response = client.patch(f"/chat/sessions/{session_id}", json=body)
    assert response.status_code == status and {"code", "detail"} <= set(response.json())


def test_an_empty_patch_changes_nothing_and_answers_the_summary(client: httpx.Client) -> None:
    session_id = start_session(client, title="Kept")
    for body in ({}, {"title": None, "role": None, "model": None}):
        response = client.patch(f"/chat/sessions/{session_id}", json=body)
        assert response.status_code == 200 and response.json()["title"] == "Kept"


def test_patch_of_another_users_or_a_missing_session_is_404(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client, title="mine")
    with service.client() as mallory:
        response = mallory.patch(f"/chat/sessions/{session_id}", json={"title": "pwned"})
        assert response.status_code == 404 and response.json()["code"] == "session_not_found"
    assert client.patch("/chat/sessions/" + "0" * 32, json={"title": "x"}).status_code == 404
    assert client.patch("/chat/sessions/nope", json={"title": "x"}).status_code == 404
    assert client.get("/chat/sessions").json()["sessions"][0]["title"] == "mine"


def test_rewriting_the_first_message_renames_a_chat_named_by_it_but_never_a_chosen_title(client: httpx.Client) -> None:
    named_by_message = start_session(client)
    first = turn_of(chat(client, named_by_message, "old first words"))
    send(client, named_by_message, "new first words", from_turn=first)
    chosen = start_session(client, title="Chosen")
    first = turn_of(chat(client, chosen, "old first words"))
    send(client, chosen, "new first words", from_turn=first)
    titles = {s["session_id"]: s["title"] for s in client.get("/chat/sessions").json()["sessions"]}
    assert titles == {named_by_message: "new first words", chosen: "Chosen"}


# -- the store's scripts: repeated, as redis-py's retry repeats them after a lost reply -------


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[HistoryStore]:
    client = create_redis(redis_server.url)
    yield HistoryStore(client, KeySpace("test" + secrets.token_hex(4)), Limits(20, 100, 3600, 5000, 600, 4, 100))
    await client.aclose()


async def store_turn(store: HistoryStore, session_id: str, text: str, **options: Any) -> tuple[str, str]:
    turn = secrets.token_hex(8)
    admission = await store.admit_turn("u", session_id, turn, role=None, default_role="a", known_roles=["a"], **options)
    if admission.duplicate_of:
        return admission.duplicate_of, "duplicate"
    again = await store.admit_turn(  # the same admission sent twice: admitted once, not a duplicate of itself
        "u", session_id, turn, role=None, default_role="a", known_roles=["a"], **options
    )
    assert again.duplicate_of is None and again.window == admission.window
    messages = [{"role": "user", "content": text, "turn_id": turn}, {"role": "assistant", "content": "A " + text}]
    kwargs = {"first_seq": 2, "payloads": [b'{"type":"end"}'], "messages": messages, "role": "a", "title": text}
    first = await store.commit_turn(
        "u", session_id, turn, **kwargs, lost_payload=b"{}", from_turn=options.get("from_turn")
    )
    second = await store.commit_turn(
        "u", session_id, turn, **kwargs, lost_payload=b"{}", from_turn=options.get("from_turn")
    )
    assert (first, second) == ("ok", "done")
    return turn, first


async def test_a_rewrite_committed_twice_cuts_and_appends_once(store: HistoryStore) -> None:
    session = await store.create_session("u", "a", None)
    turns = [(await store_turn(store, session.session_id, text))[0] for text in ("one", "two", "three")]
    await store_turn(store, session.session_id, "TWO", from_turn=turns[1])
    _, messages = await store.messages("u", session.session_id)
    assert [m["content"] for m in messages] == ["one", "A one", "TWO", "A TWO"]


async def test_a_client_message_id_is_bound_by_the_admission_and_answers_its_turn(store: HistoryStore) -> None:
    session = await store.create_session("u", "a", None)
    turn, status = await store_turn(store, session.session_id, "hi", client_message_id="c-1")
    assert status == "ok"
    assert await store_turn(store, session.session_id, "hi", client_message_id="c-1") == (turn, "duplicate")
    _, messages = await store.messages("u", session.session_id)
    assert len(messages) == 2
