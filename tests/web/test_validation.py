"""Bad input gets a clear error with a stable code, never a 500, and loses nothing."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import FakeModel, Service, chat, history, start_session


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body: dict[str, str] = response.json()
    assert body["code"] == code and body["detail"], body
    return body


@pytest.mark.parametrize("message", ["", "   ", "\n\t \n"])
def test_an_empty_or_whitespace_message_is_422_and_nothing_is_stored(
    client: httpx.Client, model: FakeModel, message: str
) -> None:
    session_id = start_session(client)
    assert_error(
        client.get("/chat/stream", params={"session_id": session_id, "message": message}), 422, "empty_message"
    )
    assert_error(client.post("/chat/stream", json={"session_id": session_id, "message": message}), 422, "empty_message")
    assert history(client, session_id)["total"] == 0 and model.requests == []
    chat(client, session_id, "the session is still usable")


def test_a_missing_message_or_session_is_422(client: httpx.Client) -> None:
    session_id = start_session(client)
    assert_error(client.get("/chat/stream", params={"session_id": session_id}), 422, "invalid_request")
    assert_error(client.get("/chat/stream", params={"message": "hi"}), 422, "invalid_request")
    assert_error(client.post("/chat/stream", json={"message": "hi"}), 422, "invalid_request")
    assert_error(client.get("/chat/history"), 422, "invalid_request")
    assert_error(client.post("/chat/stop"), 422, "invalid_request")


def test_a_message_over_the_limit_is_413(make_service: Callable[..., Service], model: FakeModel) -> None:
    service = make_service(max_message_chars=100)
    with service.client() as client:
        session_id = start_session(client)
        body = assert_error(
            client.post("/chat/stream", json={"session_id": session_id, "message": "x" * 101}), 413, "message_too_long"
        )
        assert "100" in body["detail"]
        chat(client, session_id, "y" * 100)  # exactly at the limit is fine
        assert model.requests[-1]["messages"][-1]["content"] == "y" * 100


def test_an_unknown_role_is_400_listing_the_valid_ones(client: httpx.Client) -> None:
    body = assert_error(client.post("/chat/start", json={"role": "pirate"}), 400, "unknown_role")
    assert "assistant" in body["detail"] and "teacher" in body["detail"] and "programmer" in body["detail"]
    session_id = start_session(client)
    assert_error(
        client.get("/chat/stream", params={"session_id": session_id, "message": "hi", "role": "pirate"}),
        400,
        "unknown_role",
    )
    assert history(client, session_id)["total"] == 0


@pytest.mark.parametrize("session_id", ["0" * 32, "not-a-session", "../../etc", "{alice}", "A" * 32, "0" * 1000])
def test_an_unknown_or_malformed_session_is_404_everywhere(client: httpx.Client, session_id: str) -> None:
    assert_error(client.get("/chat/history", params={"session_id": session_id}), 404, "session_not_found")
    assert_error(
        client.get("/chat/stream", params={"session_id": session_id, "message": "x"}), 404, "session_not_found"
    )
    assert_error(client.post("/chat/stream", json={"session_id": session_id, "message": "x"}), 404, "session_not_found")
    assert_error(client.post("/chat/stop", params={"session_id": session_id}), 404, "session_not_found")
    if "/" not in session_id:
        assert_error(client.delete(f"/chat/history/{session_id}"), 404, "session_not_found")
        assert_error(client.delete(f"/chat/sessions/{session_id}"), 404, "session_not_found")


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"text"', b'{"session_id": 5, "message": "x"}', b'{"session_id": "a", "message": ["x"]}'],
)
def test_malformed_json_is_422(client: httpx.Client, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/chat/stream", content=body, headers=headers), 422, "invalid_request")


def test_a_malformed_start_body_is_422(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/chat/start", content=b"{oops", headers=headers), 422, "invalid_request")
    assert_error(client.post("/chat/start", json={"role": "teacher", "colour": "red"}), 422, "invalid_request")
    assert_error(client.post("/chat/start", json={"title": "t" * 201}), 422, "invalid_request")


def test_a_malformed_last_event_id_is_422_and_an_unknown_turn_404(client: httpx.Client) -> None:
    session_id = start_session(client)
    params = {"session_id": session_id}
    assert_error(
        client.get("/chat/stream", params=params, headers={"Last-Event-ID": "garbage"}), 422, "invalid_request"
    )
    assert_error(
        client.get("/chat/stream", params=params, headers={"Last-Event-ID": "0123456789abcdef:3"}),
        404,
        "turn_not_found",
    )


def test_the_rate_limit_is_per_user_with_retry_after(make_service: Callable[..., Service]) -> None:
    service = make_service(rate_limit_per_minute=2)
    with service.client() as alice, service.client() as bob:
        session_id = start_session(alice)
        chat(alice, session_id, "one")
        chat(alice, session_id, "two")
        response = alice.post("/chat/stream", json={"session_id": session_id, "message": "three"})
        assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert history(alice, session_id)["total"] == 4
        chat(bob, start_session(bob), "bob is not limited by alice")  # per user, not per IP address
