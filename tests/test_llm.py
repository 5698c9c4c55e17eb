"""Model failures become one `error` event with a stable code; history holds no half answer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.servers import free_port


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
