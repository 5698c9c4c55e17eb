"""The offline demo model: fault directives only when the tests or the benchmark turn them on."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from personachat.demo_model import MAX_CHUNKS
from tests.conftest import FakeModel, Service, chat, start_session
from tests.sse import answer_text


def test_in_the_default_service_a_visitors_directives_are_just_text(make_service: Callable[..., Service]) -> None:
    # No model configured: the service's own demo model answers, directives off.
    service = make_service(openai_api_key=None, openai_base_url=None)
    text = "[[hang]] [[chunks=2000000]] [[status=500]]"
    with service.client(timeout=15) as client:
        session_id = start_session(client)
        started = time.monotonic()
        events = chat(client, session_id, text)
        seconds = time.monotonic() - started
    assert events[-1].type == "end", events[-1]
    answer = answer_text(events)
    assert "Offline demo model" in answer and f"You said: “{text}”" in answer
    assert seconds < 10  # the demo's own pace (25 ms a word), not an hour's hang


def test_directives_when_turned_on_are_capped(model: FakeModel) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "[[chunks=2000000]]"}]}
    started = time.monotonic()
    response = httpx.post(model.base_url + "/chat/completions", json=body, timeout=30)
    seconds = time.monotonic() - started
    words = response.json()["choices"][0]["message"]["content"].split()
    assert len(words) == MAX_CHUNKS == 10_000
    assert seconds < 2


def test_a_directive_with_an_absurd_number_is_text(model: FakeModel) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "[[chunks=" + "9" * 5000 + "]]"}]}
    response = httpx.post(model.base_url + "/chat/completions", json=body, timeout=30)
    assert response.status_code == 200
    assert "Offline demo model" in response.json()["choices"][0]["message"]["content"]
