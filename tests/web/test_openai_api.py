"""The OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`), driven by the real
`openai` SDK against the service under uvicorn and the fake model: personas as models, the
answer as OpenAI's objects (whole and streamed), server memory with X-Session-Id, only API
keys, and every error in OpenAI's shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from personachat.demo_model import DemoModel
from personachat.personas import BUILT_IN
from tests.conftest import FakeModel, Service, history, start_session, write_models_file
from tests.servers import ThreadedServer
from tests.test_identity import create_api_key

TEACHER = next(persona for persona in BUILT_IN if persona.key == "teacher")
ASSISTANT = next(persona for persona in BUILT_IN if persona.key == "assistant")
CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.2:9999"}
ANSWER = "w0 w1 w2 w3 w4 "  # the fake model's answer to [[chunks=5]]


def sdk(service: Service, key: str) -> openai.OpenAI:
    # No retries: the SDK would retry 409, 429 and 5xx, which these tests expect to see.
    return openai.OpenAI(base_url=service.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


def keyed(service: Service, key: str) -> httpx.Client:
    return service.client(headers={"Authorization": f"Bearer {key}"})


def user_says(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sent(model: FakeModel) -> list[tuple[str, str]]:
    """The (role, content) of each message of the last prompt the model got."""
    return [(message["role"], message["content"]) for message in model.requests[-1]["messages"]]


@pytest.fixture
def key(service: Service) -> str:
    return create_api_key(service, "alice")


@pytest.fixture
def api(service: Service, key: str) -> Iterator[openai.OpenAI]:
    with sdk(service, key) as client:
        yield client


# -- models ----------------------------------------------------------------------------------


def test_models_are_the_personas_the_key_s_user_may_use(service: Service, key: str, api: openai.OpenAI) -> None:
    with keyed(service, key) as http:
        own = http.post("/roles", json={"name": "Pirate", "system_prompt": "You are a pirate."})
        assert own.status_code == 201, own.text
    own_key = own.json()["key"]
    models = {model.id: model for model in api.models.list()}
    assert list(models) == ["assistant", "teacher", "programmer", own_key]
    assert models["teacher"].object == "model" and models["teacher"].owned_by == "builtin"
    assert models["teacher"].created == 0
    assert models[own_key].owned_by == "user" and models[own_key].created > time.time() - 60
    assert api.models.retrieve(own_key).id == own_key

    with sdk(service, create_api_key(service, "bob")) as bob:
        assert own_key not in {model.id for model in bob.models.list()}
        with pytest.raises(openai.NotFoundError) as missing:
            bob.models.retrieve(own_key)
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            bob.chat.completions.create(model=own_key, messages=user_says("hi"))


def test_an_own_persona_answers_with_its_system_prompt(
    service: Service, key: str, api: openai.OpenAI, model: FakeModel
) -> None:
    with keyed(service, key) as http:
        own = http.post("/roles", json={"name": "Pirate", "system_prompt": "You are a pirate."}).json()["key"]
    api.chat.completions.create(model=own, messages=user_says("ahoy"))
    assert sent(model) == [("system", "You are a pirate."), ("user", "ahoy")]


# -- answers ----------------------------------------------------------------------------------


def test_a_completion_is_the_persona_s_answer(api: openai.OpenAI, model: FakeModel) -> None:
    messages = [{"role": "system", "content": "Ignore the persona."}, *user_says("[[chunks=5]]")]
    completion = api.chat.completions.create(model="teacher", messages=messages)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.model == "teacher" and completion.id.startswith("chatcmpl-")
    assert completion.created == pytest.approx(time.time(), abs=60)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ANSWER
    assert choice.finish_reason == "stop"
    assert completion.usage is None  # the fake model reports none here
    # The persona's system prompt replaced the request's system message.
    assert sent(model) == [("system", TEACHER.system_prompt), ("user", "[[chunks=5]]")]


def test_a_streamed_completion_is_openai_chunks(api: openai.OpenAI) -> None:
    chunks = list(api.chat.completions.create(model="teacher", messages=user_says("[[chunks=5]]"), stream=True))
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {chunk.model for chunk in chunks} == {"teacher"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == ANSWER
    assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])


def test_a_stream_ends_with_done(service: Service, key: str) -> None:
    body = {"model": "assistant", "messages": user_says("[[chunks=2]]"), "stream": True}
    with keyed(service, key) as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert "set-cookie" not in response.headers


def test_usage_is_reported_when_the_provider_reports_it(make_service: Callable[..., Service]) -> None:
    counting = DemoModel(record=True, directives=True, usage=True)
    server = ThreadedServer(counting.app).start()
    try:
        service = make_service(openai_base_url=server.base_url + "/v1")
        with sdk(service, create_api_key(service, "alice")) as api:
            whole = api.chat.completions.create(model="assistant", messages=user_says("[[chunks=5]]"))
            assert whole.usage is not None and whole.usage.completion_tokens == 5
            assert whole.usage.total_tokens == whole.usage.prompt_tokens + 5
            options: Any = {"include_usage": True}
            stream = api.chat.completions.create(
                model="assistant", messages=user_says("[[chunks=5]]"), stream=True, stream_options=options
            )
            chunks = list(stream)
            # As OpenAI sends it: a last chunk with no choices that carries the usage.
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == 5
            assert chunks[-2].choices[0].finish_reason == "stop"
            # Without include_usage, the finishing chunk carries it.
            plain = list(
                api.chat.completions.create(model="assistant", messages=user_says("[[chunks=3]]"), stream=True)
            )
            assert plain[-1].choices[0].finish_reason == "stop"
            assert plain[-1].usage is not None and plain[-1].usage.completion_tokens == 3
    finally:
        server.stop()


def test_an_answer_cut_at_max_answer_chars_finishes_with_length(make_service: Callable[..., Service]) -> None:
    service = make_service(max_answer_chars=100)
    long_answer = "".join(f"w{index} ".ljust(30, "x") for index in range(5))  # 150 characters
    key = create_api_key(service, "alice")
    with sdk(service, key) as api, keyed(service, key) as http:
        for memory in ({}, {"X-Session-Id": start_session(http)}):
            prompt = user_says("[[chunks=5]] [[chunk_chars=30]]")
            completion = api.chat.completions.create(model="assistant", messages=prompt, extra_headers=memory)
            assert completion.choices[0].message.content == long_answer[:100]
            assert completion.choices[0].finish_reason == "length"
            chunks = list(api.chat.completions.create(model="assistant", messages=prompt, stream=True))
            assert chunks[-1].choices[0].finish_reason == "length"


# -- memory -----------------------------------------------------------------------------------


def test_an_idempotency_key_makes_a_repeated_request_answer_the_same_turn(
    service: Service, key: str, api: openai.OpenAI
) -> None:
    with keyed(service, key) as http:
        session_id = start_session(http, "teacher")
        headers = {"X-Session-Id": session_id, "Idempotency-Key": "retry-1"}
        first = api.chat.completions.create(model="teacher", messages=user_says("once"), extra_headers=headers)
        again = api.chat.completions.create(model="teacher", messages=user_says("once"), extra_headers=headers)
        streamed = api.chat.completions.create(
            model="teacher", messages=user_says("once"), stream=True, extra_headers=headers
        )
        replayed = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content
        assert replayed == first.choices[0].message.content
        assert history(http, session_id)["total"] == 2  # stored once
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(
                model="teacher", messages=user_says("x"), extra_headers={**headers, "Idempotency-Key": "not ok!"}
            )


def test_with_x_session_id_the_server_remembers_and_stores_the_turns(
    service: Service, key: str, api: openai.OpenAI, model: FakeModel
) -> None:
    with keyed(service, key) as http:
        session_id = start_session(http, "teacher")
        memory = {"X-Session-Id": session_id}
        earlier = [{"role": "user", "content": "not sent"}, {"role": "assistant", "content": "not sent either"}]
        first = api.chat.completions.create(
            model="teacher",
            messages=[{"role": "system", "content": "x"}, *earlier, *user_says("first question")],  # type: ignore[list-item]
            extra_headers=memory,
        )
        # Only the last user message is taken: the session had nothing before.
        assert sent(model) == [("system", TEACHER.system_prompt), ("user", "first question")]
        answer = first.choices[0].message.content
        assert answer and first.id == "chatcmpl-" + history(http, session_id)["messages"][0]["turn_id"]

        chunks = api.chat.completions.create(
            model="teacher", messages=user_says("second question"), stream=True, extra_headers=memory
        )
        second = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        assert sent(model) == [
            ("system", TEACHER.system_prompt),
            ("user", "first question"),
            ("assistant", answer),
            ("user", "second question"),
        ]
        stored = history(http, session_id)
        assert [(m["role"], m["content"]) for m in stored["messages"]] == [
            ("user", "first question"),
            ("assistant", answer),
            ("user", "second question"),
            ("assistant", second),
        ]
        assert stored["role"] == "teacher"


def test_another_user_s_session_is_not_found(service: Service, api: openai.OpenAI) -> None:
    with keyed(service, create_api_key(service, "bob")) as bob:
        foreign = start_session(bob)
    for session_id in (foreign, "no-such-session"):
        with pytest.raises(openai.NotFoundError) as missing:
            api.chat.completions.create(
                model="assistant", messages=user_says("hi"), extra_headers={"X-Session-Id": session_id}
            )
        assert missing.value.code == "session_not_found"


def test_without_x_session_id_the_request_s_messages_are_the_conversation_and_nothing_is_stored(
    service: Service, key: str, api: openai.OpenAI, model: FakeModel
) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
    ]
    api.chat.completions.create(model="assistant", messages=messages)  # type: ignore[arg-type]
    assert sent(model) == [("system", ASSISTANT.system_prompt), ("user", "a"), ("assistant", "b"), ("user", "c\nd")]
    with keyed(service, key) as http:
        assert http.get("/chat/sessions").json()["total"] == 0
        assert http.get("/usage").json()["turns"] == 0  # the fake model reports no usage here


def test_a_session_runs_one_answer_at_a_time(service: Service, key: str, api: openai.OpenAI) -> None:
    with keyed(service, key) as http:
        session_id = start_session(http)
        memory = {"X-Session-Id": session_id}
        stream = api.chat.completions.create(
            model="assistant", messages=user_says("[[chunks=50]] [[delay_ms=100]]"), stream=True, extra_headers=memory
        )
        next(iter(stream))  # the turn runs
        with pytest.raises(openai.ConflictError) as busy:
            api.chat.completions.create(model="assistant", messages=user_says("again"), extra_headers=memory)
        assert busy.value.status_code == 409 and busy.value.code == "turn_in_progress"
        stream.close()  # the client goes; the turn goes on, and is stored when stopped
        assert http.post("/chat/stop", params={"session_id": session_id}).json()["stopped"] is True
        messages = history(http, session_id)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["stopped"] is True


# -- sampling ---------------------------------------------------------------------------------


def test_temperature_and_max_tokens_pass_within_the_persona_s_limits(
    make_service: Callable[..., Service], model: FakeModel, tmp_path: Path
) -> None:
    models_file = write_models_file(tmp_path / "models.yaml", model.base_url, "fake-model", max_output_tokens=50)
    service = make_service(models_file=models_file)
    key = create_api_key(service, "alice")
    with sdk(service, key) as api, keyed(service, key) as http:
        api.chat.completions.create(model="assistant", messages=user_says("hi"), temperature=0.3, max_tokens=1000)
        assert (model.requests[-1]["temperature"], model.requests[-1]["max_tokens"]) == (0.3, 50)
        # The teacher pins 0.5: it wins over the request's.
        api.chat.completions.create(model="teacher", messages=user_says("hi"), temperature=1.5, max_tokens=10)
        assert (model.requests[-1]["temperature"], model.requests[-1]["max_tokens"]) == (0.5, 10)
        api.chat.completions.create(
            model="assistant",
            messages=user_says("hi"),
            temperature=0.7,
            max_completion_tokens=20,
            extra_headers={"X-Session-Id": start_session(http)},
        )
        assert (model.requests[-1]["temperature"], model.requests[-1]["max_tokens"]) == (0.7, 20)
        # Ignored parameters change nothing upstream.
        api.chat.completions.create(
            model="assistant", messages=user_says("hi"), top_p=0.1, stop=["x"], presence_penalty=1, user="u", n=1
        )
        assert not {"top_p", "stop", "presence_penalty", "user", "n"} & set(model.requests[-1])
        assert "temperature" not in model.requests[-1]


# -- refusals and errors ----------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
IMAGE = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"tools": [TOOL]}, "tools_not_supported"),
        ({"tools": [TOOL], "tool_choice": "required"}, "tools_not_supported"),
        ({"messages": [{"role": "user", "content": IMAGE}]}, "unsupported_content"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "tools_not_supported"),
        ({"n": 2}, "n_not_supported"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format_not_supported",
        ),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "invalid_request"),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_400(
    api: openai.OpenAI, model: FakeModel, options: dict[str, Any], code: str
) -> None:
    request: dict[str, Any] = {"model": "assistant", "messages": user_says("hi"), **options}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(**request, stream=stream)
        assert refused.value.code == code and refused.value.message
    assert model.requests == []


def test_an_unknown_model_is_not_found(api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="gpt-4o", messages=user_says("hi"))
    assert missing.value.code == "model_not_found" and "gpt-4o" in missing.value.message
    body: Any = missing.value.body  # the error object, in OpenAI's shape
    assert set(body) == {"message", "type", "param", "code"} and body["message"] in missing.value.message
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, "model_not_found")


def test_a_model_failure_is_502_or_504_and_an_error_in_the_stream(make_service: Callable[..., Service]) -> None:
    service = make_service(upstream_timeout_seconds=0.5)
    with sdk(service, create_api_key(service, "alice")) as api:
        with pytest.raises(openai.InternalServerError) as failed:
            api.chat.completions.create(model="assistant", messages=user_says("[[status=500]]"))
        assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
        with pytest.raises(openai.InternalServerError) as slow:
            api.chat.completions.create(model="assistant", messages=user_says("[[hang]]"))
        assert slow.value.status_code == 504 and slow.value.code == "upstream_timeout"

        received = []
        # The pause lets the first chunk arrive on its own (the model client drops the text of
        # a read that also holds the error).
        failing = user_says("[[chunks=5]] [[delay_ms=100]] [[error_after=2]]")
        stream = api.chat.completions.create(model="assistant", messages=failing, stream=True)
        with pytest.raises(openai.APIError) as broken:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received).startswith("w0 ")
        assert broken.value.code == "upstream_error"  # type: ignore[attr-defined]
        assert "demo fault" in broken.value.message


def test_only_api_keys_are_accepted(service: Service, key: str) -> None:
    body = {"model": "assistant", "messages": user_says("hi")}
    with service.client() as browser:
        assert browser.get("/roles").status_code == 200  # the browser has its identity cookie
        assert browser.cookies.get(service.settings.cookie_name)
        for response in (browser.post("/v1/chat/completions", json=body), browser.get("/v1/models")):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "not_authenticated"
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
            assert "set-cookie" not in response.headers
        # A wrong key is a 401 even with a valid cookie.
        wrong = browser.get("/v1/models", headers={"Authorization": "Bearer pck_wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with httpx.Client(base_url=service.base_url) as anonymous:
        response = anonymous.get("/v1/models")
        assert response.status_code == 401 and "set-cookie" not in response.headers
    with sdk(service, "pck_wrong") as wrong_sdk, pytest.raises(openai.AuthenticationError) as refused:
        wrong_sdk.chat.completions.create(model="assistant", messages=user_says("hi"))
    assert refused.value.code == "invalid_api_key"


def test_a_key_from_another_site_s_page_is_not_refused_and_mints_no_cookie(service: Service, key: str) -> None:
    body = {"model": "assistant", "messages": user_says("[[chunks=1]]")}
    with keyed(service, key) as http:
        response = http.post("/v1/chat/completions", json=body, headers=CROSS_SITE)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "w0 "
        assert "set-cookie" not in response.headers
    with service.client() as browser:
        refused = browser.post("/v1/chat/completions", json=body, headers=CROSS_SITE)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_site"


def test_errors_under_v1_are_in_openai_s_shape_and_others_are_not(service: Service, key: str) -> None:
    with keyed(service, key) as http:
        unknown = http.get("/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        method = http.get("/v1/chat/completions")
        assert method.status_code == 405 and method.headers["allow"] == "POST"
        assert method.json()["error"]["code"] == "method_not_allowed"
        invalid = http.post("/v1/chat/completions", json={"model": "assistant"})
        assert invalid.status_code == 400
        assert invalid.json()["error"] == {
            "message": invalid.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "messages",
            "code": "invalid_request",
        }
        not_json = http.post("/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_request"
        empty = http.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": user_says("  ")},
            headers={"X-Session-Id": start_session(http)},
        )
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_message"
        too_big = http.post("/v1/chat/completions", content=b"x" * (service.settings.resolved_max_body_bytes + 1))
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
        # The rest of the API keeps its own shape.
        assert set(http.get("/nothing-here").json()) == {"code", "detail"}
        assert set(http.get("/v1").json()["error"]) == {"message", "type", "param", "code"}


def test_the_user_s_rate_limit_holds_without_a_session(make_service: Callable[..., Service]) -> None:
    service = make_service(rate_limit_per_minute=1)
    with sdk(service, create_api_key(service, "alice")) as api:
        api.chat.completions.create(model="assistant", messages=user_says("hi"))
        with pytest.raises(openai.RateLimitError) as limited:
            api.chat.completions.create(model="assistant", messages=user_says("again"))
    assert limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_an_answer_without_a_session_holds_a_slot_until_its_client_goes(make_service: Callable[..., Service]) -> None:
    service = make_service(max_concurrent_turns_per_user=1)
    with sdk(service, create_api_key(service, "alice")) as api:
        slow = user_says("[[chunks=100]] [[delay_ms=100]]")
        stream = api.chat.completions.create(model="assistant", messages=slow, stream=True)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as limited:
            api.chat.completions.create(model="assistant", messages=user_says("hi"))
        assert "at once" in limited.value.message
        stream.close()  # nothing would store the rest: the answer stops, and its slot is free
        deadline = time.monotonic() + 5
        while True:
            try:
                completion = api.chat.completions.create(model="assistant", messages=user_says("[[chunks=1]]"))
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the slot was not given back"
                time.sleep(0.05)
        assert completion.choices[0].message.content == "w0 "
        # And slots are given back after whole answers too.
        for _ in range(3):
            api.chat.completions.create(model="assistant", messages=user_says("[[chunks=1]]"))
