"""POST /chat/messages, the whole answer as JSON: through a real uvicorn, real Redis and the
fake model; what it answers, what it stores, and that a client going away stops nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from personachat.demo_model import DemoModel
from tests.conftest import FakeModel, Service, history, start_session
from tests.servers import ThreadedServer
from tests.sse import answer_text, collect

LONG = "[[chunks=80]] [[delay_ms=25]]"  # about 2 s of answer
ANSWER_FIELDS = {"session_id", "turn_id", "role", "model", "content", "finish_reason"}


def post_message(client: httpx.Client, session_id: str, message: str, **fields: Any) -> httpx.Response:
    return client.post("/chat/messages", json={"session_id": session_id, "message": message, **fields})


def answer_of(client: httpx.Client, session_id: str, message: str, **fields: Any) -> dict[str, Any]:
    response = post_message(client, session_id, message, **fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def running_turn(client: httpx.Client, session_id: str) -> str | None:
    turn: str | None = history(client, session_id)["running_turn_id"]
    return turn


class Background:
    """A POST /chat/messages sent from a thread of its own (a client waiting for its answer)."""

    def __init__(self, service: Service, cookies: httpx.Cookies, body: dict[str, Any]) -> None:
        self.response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._send, args=(service, cookies, body), daemon=True)
        self._thread.start()

    def _send(self, service: Service, cookies: httpx.Cookies, body: dict[str, Any]) -> None:
        with service.client(cookies=cookies) as client:
            self.response = client.post("/chat/messages", json=body)

    def result(self) -> httpx.Response:
        self._thread.join(timeout=30)
        assert self.response is not None, "no answer within 30 s"
        return self.response


def send_in_background(
    client: httpx.Client, service: Service, session_id: str, message: str, **fields: Any
) -> Background:
    """Send `message` from another thread and return once its turn runs."""
    sending = Background(service, client.cookies, {"session_id": session_id, "message": message, **fields})
    wait_for(lambda: running_turn(client, session_id) is not None)
    return sending


# -- answers and what they store ------------------------------------------------------------


def test_the_answer_is_one_json_object_and_the_turn_is_stored(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client, "teacher")
    body = answer_of(client, session_id, "What is a fraction?")
    assert set(body) == ANSWER_FIELDS  # no usage: this provider reports none
    assert body["session_id"] == session_id and body["role"] == "teacher" and body["model"] == "fake-model"
    assert body["finish_reason"] == "stop" and "Offline demo model" in body["content"]
    stored = history(client, session_id)
    assert stored["total"] == 2 and stored["running_turn_id"] is None
    user, answer = stored["messages"]
    assert (user["role"], user["content"], user["turn_id"]) == ("user", "What is a fraction?", body["turn_id"])
    assert (answer["role"], answer["content"], answer["turn_id"]) == ("assistant", body["content"], body["turn_id"])
    assert answer["persona"] == "teacher" and answer["model"] == "fake-model" and "stopped" not in answer
    # The next message's prompt carries the stored turn, as a stream's would.
    second = answer_of(client, session_id, "And a decimal?")
    assert second["turn_id"] != body["turn_id"]
    prompt = model.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in prompt[1:]] == [
        ("user", "What is a fraction?"),
        ("assistant", body["content"]),
        ("user", "And a decimal?"),
    ]
    assert history(client, session_id)["total"] == 4


def test_the_answer_is_what_a_stream_of_the_same_turn_says(client: httpx.Client) -> None:
    session_id = start_session(client)
    body = answer_of(client, session_id, "[[chunks=30]]", client_message_id="both-ways")
    # The same turn read as a stream (a repeated send replays it): the same text and end.
    with client.stream(
        "POST", "/chat/stream", json={"session_id": session_id, "message": "x", "client_message_id": "both-ways"}
    ) as response:
        events = collect(response)
    assert events[0].data["turn_id"] == body["turn_id"] and answer_text(events) == body["content"]
    assert events[-1].data["finish_reason"] == body["finish_reason"] == "stop"


def test_role_and_model_of_the_send_are_used_and_answered(client: httpx.Client, model: FakeModel) -> None:
    session_id = start_session(client)
    body = answer_of(client, session_id, "hi", role="programmer", model="fake-model")
    assert body["role"] == "programmer" and body["model"] == "fake-model"
    assert history(client, session_id)["role"] == "programmer"  # the session's persona from now on


@pytest.fixture(scope="module")
def usage_model() -> Iterator[str]:
    """A provider that reports token usage."""
    server = ThreadedServer(DemoModel(record=False, directives=True, usage=True).app).start()
    yield server.base_url + "/v1"
    server.stop()


def test_usage_is_answered_when_the_provider_reports_it(make_service: Callable[..., Service], usage_model: str) -> None:
    service = make_service(openai_base_url=usage_model)
    with service.client() as client:
        session_id = start_session(client)
        body = answer_of(client, session_id, "count my tokens")
        usage = body["usage"]
        assert set(usage) == {"prompt_tokens", "completion_tokens"} and usage["completion_tokens"] > 0
        assert history(client, session_id)["messages"][1]["usage"] == usage
        assert client.get("/usage").json()["completion_tokens"] == usage["completion_tokens"]


# -- model failures: 502 and 504 with {code, detail}, nothing stored --------------------------


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("[[status=500]]", 502, "upstream_error"),
        ("[[status=401]]", 502, "upstream_auth"),
        ("[[cut_after=3]]", 502, "upstream_stream_cut"),
        ("[[error_after=2]]", 502, "upstream_error"),
        ("[[garbage]]", 502, "upstream_bad_response"),
        ("[[hang]]", 504, "upstream_timeout"),
        ("[[hang_after=2]]", 504, "upstream_timeout"),
    ],
)
def test_a_model_failure_is_its_status_with_code_and_detail_and_stores_nothing(
    make_service: Callable[..., Service], directive: str, status: int, code: str
) -> None:
    service = make_service(upstream_timeout_seconds=1.0)
    with service.client() as client:
        session_id = start_session(client)
        good = answer_of(client, session_id, "a good turn first")
        response = post_message(client, session_id, f"please fail {directive}")
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()
        assert set(error) == {"code", "detail"} and error["code"] == code and error["detail"]
        stored = history(client, session_id)
        assert stored["total"] == 2 and stored["running_turn_id"] is None  # the good turn only
        assert [m["turn_id"] for m in stored["messages"]] == [good["turn_id"]] * 2
        answer_of(client, session_id, "the session works again")
        assert history(client, session_id)["total"] == 4


def test_the_turn_deadline_is_504_turn_timeout(make_service: Callable[..., Service]) -> None:
    service = make_service(upstream_timeout_seconds=1.0, turn_timeout_seconds=2.0)
    with service.client() as client:
        session_id = start_session(client)
        started = time.monotonic()
        response = post_message(client, session_id, "[[chunks=1000]] [[delay_ms=20]]")  # 20 s of answer
        assert response.status_code == 504 and response.json()["code"] == "turn_timeout"
        assert time.monotonic() - started < 5
        assert history(client, session_id)["total"] == 0


def test_an_unreachable_model_is_502(make_service: Callable[..., Service]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    service = make_service(openai_base_url=f"http://127.0.0.1:{port}/v1")
    with service.client() as client:
        session_id = start_session(client)
        response = post_message(client, session_id, "anyone there?")
        assert response.status_code == 502 and response.json()["code"] == "upstream_unreachable"
        assert history(client, session_id)["total"] == 0


# -- a client that goes away ------------------------------------------------------------------


def test_a_client_that_disconnects_before_the_answer_stops_nothing_and_the_turn_is_stored(
    client: httpx.Client, service: Service
) -> None:
    session_id = start_session(client)
    cookie = client.cookies[service.settings.cookie_name]
    body = json.dumps({"session_id": session_id, "message": LONG}).encode()
    url = urlsplit(service.base_url)
    head = (
        f"POST /chat/messages HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCookie: {service.settings.cookie_name}={cookie}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port)) as raw:
        raw.sendall(head.encode() + body)
    # The socket is closed: nobody waits for this answer. The turn runs on, and is stored.
    wait_for(lambda: running_turn(client, session_id) is not None)
    wait_for(lambda: history(client, session_id)["total"] == 2)
    stored = history(client, session_id)
    user, answer = stored["messages"]
    assert user["content"] == LONG and stored["running_turn_id"] is None
    assert "stopped" not in answer and answer["content"].split() == [f"w{n}" for n in range(80)]


# -- repeated sends ---------------------------------------------------------------------------


def test_a_repeated_client_message_id_answers_the_same_turn_and_stores_nothing_twice(
    client: httpx.Client, model: FakeModel
) -> None:
    session_id = start_session(client)
    first = answer_of(client, session_id, "hello", client_message_id="msg-1")
    asked = len(model.requests)
    again = answer_of(client, session_id, "hello", client_message_id="msg-1")
    assert again == first
    assert len(model.requests) == asked and history(client, session_id)["total"] == 2
    other = answer_of(client, session_id, "hello", client_message_id="msg-2")  # a new id is a new turn
    assert other["turn_id"] != first["turn_id"] and history(client, session_id)["total"] == 4


def test_a_repeated_client_message_id_during_its_turn_waits_for_the_same_answer(
    client: httpx.Client, service: Service, model: FakeModel
) -> None:
    session_id = start_session(client)
    sending = send_in_background(client, service, session_id, LONG, client_message_id="retry_me")
    # The first client lost its connection, say, and sends again while the turn runs.
    repeated = answer_of(client, session_id, LONG, client_message_id="retry_me")
    first = sending.result()
    assert first.status_code == 200 and first.json() == repeated
    assert repeated["finish_reason"] == "stop" and len(model.requests) == 1
    assert history(client, session_id)["total"] == 2


def test_a_stream_s_turn_repeated_here_answers_its_result(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    body = {"session_id": session_id, "message": LONG, "client_message_id": "from-a-stream"}
    with client.stream("POST", "/chat/stream", json=body) as response:
        assert response.status_code == 200
        with service.client(cookies=client.cookies) as other:
            answer = answer_of(other, session_id, LONG, client_message_id="from-a-stream")
        events = collect(response)
    assert answer["turn_id"] == events[0].data["turn_id"] and answer["content"] == answer_text(events)
    assert history(client, session_id)["total"] == 2


# -- errors known before the model runs --------------------------------------------------------


def test_a_second_message_while_a_turn_runs_is_409(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    sending = send_in_background(client, service, session_id, LONG)
    response = post_message(client, session_id, "me too")
    assert response.status_code == 409 and response.json()["code"] == "turn_in_progress"
    assert sending.result().status_code == 200
    assert [m["content"] for m in history(client, session_id)["messages"]][::2] == [LONG]  # "me too" never stored


def test_another_users_or_a_missing_session_is_404(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    with service.client() as mallory:
        response = post_message(mallory, session_id, "let me in")
        assert response.status_code == 404 and response.json()["code"] == "session_not_found"
    response = post_message(client, "0" * 32, "anyone?")
    assert response.status_code == 404 and response.json() == {
        "code": "session_not_found",
        "detail": "No such session.",
    }
    response = post_message(client, session_id, "x", from_turn="0123456789abcdef")
    assert response.status_code == 404 and response.json()["code"] == "turn_not_found"
    assert history(client, session_id)["total"] == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"message": "no session"}, 422, "invalid_request"),
        ({"session_id": "S"}, 422, "invalid_request"),  # a message is required: there is no resume here
        ({"session_id": "S", "message": None}, 422, "invalid_request"),
        ({"session_id": "S", "message": 42}, 422, "invalid_request"),
        ({"session_id": "S", "message": ""}, 422, "empty_message"),
        ({"session_id": "S", "message": " \n\t "}, 422, "empty_message"),
        ({"session_id": "S", "message": "x", "extra": 1}, 422, "invalid_request"),
        ({"session_id": "S", "message": "x", "client_message_id": "has space"}, 422, "invalid_request"),
        ({"session_id": "S", "message": "x", "client_message_id": "a" * 65}, 422, "invalid_request"),
        ({"session_id": "S", "message": "x" * 101}, 413, "message_too_long"),
        ({"session_id": "S", "message": "x", "role": "pirate"}, 400, "unknown_role"),
        ({"session_id": "S", "message": "x", "model": "no-such-model"}, 400, "unknown_model"),
    ],
)
def test_bad_sends_are_refused_as_the_stream_refuses_them(
    make_service: Callable[..., Service], body: dict[str, Any], status: int, code: str
) -> None:
    service = make_service(max_message_chars=100)
    with service.client() as client:
        session_id = start_session(client)
        if "session_id" in body:
            body = {**body, "session_id": session_id}
        response = client.post("/chat/messages", json=body)
        assert response.status_code == status, response.text
        assert response.json()["code"] == code and response.json()["detail"]
        stream = client.post("/chat/stream", json=body)  # the same refusal, except for a missing message
        if "message" in body:
            assert (stream.status_code, stream.json()["code"]) == (status, code)
        assert history(client, session_id)["total"] == 0


def test_a_body_that_is_not_json_is_422(client: httpx.Client) -> None:
    for content in (b"{not json", b"\xff\xfe", b"[]", b""):
        response = client.post("/chat/messages", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["code"] == "invalid_request", content


# -- stop -------------------------------------------------------------------------------------


def test_a_stopped_turn_answers_200_stopped_with_the_partial_answer_stored(
    client: httpx.Client, service: Service
) -> None:
    session_id = start_session(client)
    sending = send_in_background(client, service, session_id, "[[chunks=400]] [[delay_ms=25]]")  # 10 s
    time.sleep(0.3)  # a few chunks in
    stop = client.post("/chat/stop", params={"session_id": session_id})
    assert stop.status_code == 200 and stop.json()["stopped"] is True
    response = sending.result()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["finish_reason"] == "stopped" and body["turn_id"] == stop.json()["turn_id"]
    stored = history(client, session_id)
    assert stored["total"] == 2 and stored["messages"][1]["stopped"] is True
    assert stored["messages"][1]["content"] == body["content"]
    words = body["content"].split()
    assert 0 < len(words) < 400 and words == [f"w{n}" for n in range(len(words))]  # the first part


def test_the_route_is_documented_with_its_failure_statuses(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/chat/messages"]["post"]
    assert operation["summary"] and "client_message_id" in operation["description"]
    for status in ("200", "404", "409", "422", "502", "504"):
        assert status in operation["responses"], status
    body = client.get("/openapi.json").json()["components"]["schemas"]["MessageRequest"]
    assert body["required"] == ["session_id", "message"]
    assert "At most 16000 characters" in body["properties"]["message"]["description"]  # MAX_MESSAGE_CHARS
    for status in ("413", "502", "504"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
