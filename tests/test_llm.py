"""The model client (llm.py) over real HTTP: every failure is one `error` event with its stable
code, history holds no half answer, and UPSTREAM_TIMEOUT_SECONDS is one budget, retries included."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.servers import ThreadedServer, free_port, running


@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("[[status=401]]", "upstream_auth"),
        ("[[status=403]]", "upstream_auth"),
        ("[[status=429]]", "upstream_rate_limited"),
        ("[[status=500]]", "upstream_error"),
        ("[[status=503]]", "upstream_error"),
        ("[[status=404]]", "model_not_found"),
        ("[[status=400]]", "upstream_bad_request"),
        ("[[cut_after=3]]", "upstream_stream_cut"),
        ("[[error_after=2]]", "upstream_error"),
        ("[[garbage]]", "upstream_bad_response"),
        ("[[hang]]", "upstream_timeout"),
        ("[[hang_after=2]]", "upstream_timeout"),
    ],
)
def test_an_upstream_failure_is_one_error_event_and_stores_nothing(
    make_service: Callable[..., Service], model: FakeModel, directive: str, code: str
) -> None:
    service = make_service(upstream_timeout_seconds=1.0)
    with service.client() as client:
        session_id = start_session(client)
        chat(client, session_id, "a good turn first")
        events = chat(client, session_id, f"please fail {directive}")
        assert events[0].type == "start"
        assert [e.type for e in events[1:-1]] == ["chunk"] * (len(events) - 2)
        error = events[-1]
        assert error.type == "error" and error.data["code"] == code and error.data["content"]
        assert set(error.data) == {"type", "code", "content"}
        assert error.id == f"{events[0].data['turn_id']}:{len(events)}"
        stored = history(client, session_id)
        assert stored["total"] == 2 and stored["running_turn_id"] is None  # only the good turn
        chat(client, session_id, "the session works again")
        assert history(client, session_id)["total"] == 4


def test_an_unreachable_model_is_an_error_event(make_service: Callable[..., Service]) -> None:
    service = make_service(openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    with service.client() as client:
        session_id = start_session(client)
        events = chat(client, session_id, "anyone there?")
        assert [e.type for e in events] == ["start", "error"]
        assert events[-1].data["code"] == "upstream_unreachable"
        assert history(client, session_id)["total"] == 0


def test_the_turn_deadline_ends_a_model_that_trickles_forever(
    make_service: Callable[..., Service], model: FakeModel
) -> None:
    service = make_service(upstream_timeout_seconds=1.0, turn_timeout_seconds=2.0)
    with service.client() as client:
        session_id = start_session(client)
        events = chat(client, session_id, "[[chunks=1000]] [[delay_ms=20]]")  # 20 s of answer
        assert events[-1].type == "error" and events[-1].data["code"] == "turn_timeout"
        assert history(client, session_id)["total"] == 0


@pytest.mark.parametrize("directive", ["[[hang]]", "[[hang_after=3]]", "[[first_delay_ms=60000]]"])
def test_a_hung_model_is_reported_after_upstream_timeout_seconds_retries_included(
    make_service: Callable[..., Service], model: FakeModel, directive: str
) -> None:
    """UPSTREAM_TIMEOUT_SECONDS bounds the whole wait for the first token (the SDK's retries
    included) and each wait between tokens."""
    timeout = 1.5
    service = make_service(upstream_timeout_seconds=timeout, upstream_max_retries=2)
    with service.client() as client:
        session_id = start_session(client)
        started = time.monotonic()
        events = chat(client, session_id, f"{directive} [[chunks=10]]")
        elapsed = time.monotonic() - started
    assert events[-1].type == "error" and events[-1].data["code"] == "upstream_timeout"
    assert timeout <= elapsed < timeout + 0.5, elapsed


def test_a_slow_model_is_not_cut_while_each_token_comes_within_the_timeout(
    make_service: Callable[..., Service], model: FakeModel
) -> None:
    service = make_service(upstream_timeout_seconds=1.0, upstream_max_retries=2)
    with service.client() as client:
        session_id = start_session(client)
        started = time.monotonic()
        events = chat(client, session_id, "[[first_delay_ms=700]] [[chunks=4]] [[delay_ms=700]]")
        assert time.monotonic() - started > 2.5  # far longer than the timeout, in total
    assert events[-1].type == "end" and events[-1].data["finish_reason"] == "stop"
    assert [e.data["content"] for e in events if e.type == "chunk"] == ["w0 ", "w1 ", "w2 ", "w3 "]


def test_a_model_server_that_never_answers_is_reported_after_upstream_timeout_seconds(
    make_service: Callable[..., Service],
) -> None:
    """The SDK retries a request whose headers did not come in time; the retry must fit in
    the same UPSTREAM_TIMEOUT_SECONDS, not double it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are accepted by the kernel, and never answered
    try:
        timeout = 1.5
        service = make_service(
            openai_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
            upstream_timeout_seconds=timeout,
            upstream_max_retries=1,
        )
        with service.client() as client:
            session_id = start_session(client)
            started = time.monotonic()
            events = chat(client, session_id, "hello?")
            elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert [e.type for e in events] == ["start", "error"] and events[-1].data["code"] == "upstream_timeout"
    assert timeout <= elapsed < timeout + 0.5, elapsed


def test_a_stream_that_ends_cleanly_without_a_finish_reason_is_a_cut_stream(
    make_service: Callable[..., Service],
) -> None:
    async def completions(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            chunk = {"choices": [{"index": 0, "delta": {"content": "half an"}, "finish_reason": None}]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"  # then the body ends: no finish, no [DONE]

        return StreamingResponse(body(), media_type="text/event-stream")

    quitter = ThreadedServer(Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])]))
    with running(quitter):
        service = make_service(openai_base_url=quitter.base_url + "/v1")
        with service.client() as client:
            session_id = start_session(client)
            events = chat(client, session_id, "tell me everything")
            assert [e.type for e in events] == ["start", "chunk", "error"]
            assert events[-1].data["code"] == "upstream_stream_cut"
            assert history(client, session_id)["total"] == 0


@pytest.mark.parametrize(
    ("directive", "attempts"), [("[[status=503]]", 2), ("[[status=429]]", 2), ("[[status=400]]", 1)]
)
def test_the_sdk_retries_transient_refusals_within_the_budget_and_not_the_others(
    make_service: Callable[..., Service], model: FakeModel, directive: str, attempts: int
) -> None:
    service = make_service(upstream_timeout_seconds=5.0, upstream_max_retries=1)
    with service.client() as client:
        session_id = start_session(client)
        chat(client, session_id, directive)
    assert len(model.requests) == attempts
