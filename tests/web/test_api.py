"""Every endpoint's success path, as a REST client or the page uses it."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.sse import answer_text


def test_roles_lists_the_built_in_personas(client: httpx.Client) -> None:
    body = client.get("/roles").json()
    keys = [role["key"] for role in body["roles"]]
    assert {"assistant", "teacher", "programmer"} <= set(keys)
    assert body["default_role"] == "assistant"
    assert all(role["name"] and role["description"] for role in body["roles"])


def test_start_answers_the_session_with_a_welcome_that_is_not_stored(client: httpx.Client) -> None:
    response = client.post("/chat/start", json={"role": "teacher", "title": "Fractions"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"session_id", "role", "welcome_message", "created_at", "model"}
    assert body["model"] is None  # none chosen: each message gets the persona's, else the default
    assert body["role"] == "teacher" and body["welcome_message"]
    assert len(body["session_id"]) == 32
    stored = history(client, body["session_id"])
    assert stored["messages"] == [] and stored["total"] == 0 and stored["title"] == "Fractions"


def test_start_without_a_body_uses_the_default_persona(client: httpx.Client) -> None:
    response = client.post("/chat/start")
    assert response.status_code == 200
    assert response.json()["role"] == "assistant"


def test_session_ids_are_unguessable_and_distinct(client: httpx.Client) -> None:
    ids = {start_session(client) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(sid) == 32 and int(sid, 16) >= 0 for sid in ids)


def test_get_stream_relays_the_answer_as_json_events_with_ids(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client, "teacher")
    with client.stream("GET", "/chat/stream", params={"session_id": session_id, "message": "Hello"}) as response:
        assert response.status_code == 200
        assert response.headers["x-accel-buffering"] == "no"
        from tests.sse import collect

        events = collect(response)
    assert events[0].type == "start"
    assert events[0].data == {
        "type": "start",
        "session_id": session_id,
        "turn_id": events[0].data["turn_id"],
        "role": "teacher",
        "model": "fake-model",
        "context": {"messages": 0, "dropped": 0},
    }
    assert events[-1].type == "end" and events[-1].data["finish_reason"] == "stop"
    assert all(event.type == "chunk" for event in events[1:-1])
    turn_id = events[0].data["turn_id"]
    assert [event.id for event in events] == [f"{turn_id}:{n}" for n in range(1, len(events) + 1)]
    assert "Offline demo model" in answer_text(events)
    assert model.requests[-1]["stream"] is True


def test_post_stream_stores_the_turn_and_history_returns_it(client: httpx.Client) -> None:
    session_id = start_session(client)
    events = chat(client, session_id, "What is Redis?")
    stored = history(client, session_id)
    assert stored["session_id"] == session_id and stored["role"] == "assistant" and stored["total"] == 2
    user, answer = stored["messages"]
    assert user["role"] == "user" and user["content"] == "What is Redis?"
    assert answer["role"] == "assistant" and answer["content"] == answer_text(events)
    assert answer["persona"] == "assistant" and "stopped" not in answer
    assert user["timestamp"] <= answer["timestamp"]
    assert stored["running_turn_id"] is None


def test_history_keeps_the_message_as_sent_but_trims_outer_whitespace(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client)
    chat(client, session_id, "  two\nlines <b>and markup</b>  ")
    assert history(client, session_id)["messages"][0]["content"] == "two\nlines <b>and markup</b>"
    assert model.requests[-1]["messages"][-1]["content"] == "two\nlines <b>and markup</b>"


def test_clear_empties_the_history_but_keeps_the_session(client: httpx.Client) -> None:
    session_id = start_session(client)
    chat(client, session_id, "remember this")
    response = client.delete(f"/chat/history/{session_id}")
    assert response.status_code == 200 and response.json() == {"session_id": session_id, "cleared": True}
    assert history(client, session_id)["messages"] == []
    chat(client, session_id, "after clearing")
    assert history(client, session_id)["total"] == 2


def test_sessions_are_listed_newest_activity_first_with_title_and_counts(client: httpx.Client) -> None:
    first, second = start_session(client), start_session(client, "programmer")
    chat(client, second, "write a haiku about sockets")
    chat(client, first, "a question about tea, which is long enough to need cutting down to a sensible title")
    body = client.get("/chat/sessions").json()
    assert body["total"] == 2
    listed = body["sessions"]
    assert [s["session_id"] for s in listed] == [first, second]
    assert listed[0]["title"] == "a question about tea, which is long enough to need cutting d"
    assert listed[1]["title"] == "write a haiku about sockets" and listed[1]["role"] == "programmer"
    assert listed[0]["messages"] == 2
    assert set(listed[0]) >= {"session_id", "title", "role", "created_at", "last_activity", "messages"}


def test_delete_session_removes_it_and_its_messages(client: httpx.Client) -> None:
    session_id = start_session(client)
    chat(client, session_id, "hello")
    response = client.delete(f"/chat/sessions/{session_id}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    assert client.get("/chat/history", params={"session_id": session_id}).status_code == 404
    assert client.get("/chat/sessions").json()["total"] == 0
    assert client.delete(f"/chat/sessions/{session_id}").status_code == 404


def test_stop_without_a_running_turn_says_nothing_was_stopped(client: httpx.Client) -> None:
    session_id = start_session(client)
    response = client.post("/chat/stop", params={"session_id": session_id})
    assert response.status_code == 200
    assert response.json() == {"session_id": session_id, "turn_id": None, "stopped": False}


def test_health_readiness_docs_and_page(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    schema = client.get("/openapi.json").json()
    assert {"/chat/start", "/chat/stream", "/chat/history", "/chat/sessions", "/roles", "/chat/stop"} <= set(
        schema["paths"]
    )
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_keep_alive_pings_flow_while_the_model_is_slow_to_answer(make_service: Callable[..., Service]) -> None:
    service = make_service(sse_ping_seconds=0.2)
    with service.client() as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": "[[chunks=2]] [[delay_ms=700]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            raw = response.read().decode()
    assert raw.count(": ping") >= 3  # comments, which EventSource ignores
    assert raw.rstrip().endswith('"finish_reason":"stop"}')
