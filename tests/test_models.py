"""Models and providers, end to end: two fake OpenAI-compatible providers (one requiring its
key) behind one service, the model precedence, unknown models, token usage and the prompt
fitted to a model's context window. Real uvicorn, real Redis, real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from typer.testing import CliRunner

from config import Settings
from main import create_app
from personachat.admin.cli import app as chatctl
from personachat.context import message_tokens
from personachat.demo_model import DemoModel
from personachat.models import ModelsFileError
from personachat.store.keys import KeySpace
from tests.conftest import Service, chat, history, start_session
from tests.servers import RedisProcess, ThreadedServer
from tests.sse import Event, answer_text

SECOND_KEY = "sk-second-secret-123"


class Provider:
    def __init__(self, **options: Any) -> None:
        self.model = DemoModel(record=True, directives=True, **options)
        self.server = ThreadedServer(self.model.app).start()
        self.base_url = self.server.base_url + "/v1"


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, Provider]]:
    made = {
        "first": Provider(usage=True),  # reports usage when asked
        "second": Provider(api_key=SECOND_KEY),  # wants its key; never reports usage
        "short": Provider(usage=True, max_prompt_chars=400),  # refuses long prompts with a 400
    }
    yield made
    for provider in made.values():
        provider.server.stop()


@pytest.fixture
def fakes(providers: dict[str, Provider]) -> dict[str, Provider]:
    for provider in providers.values():
        provider.model.requests.clear()
        provider.model.keys.clear()
    return providers


def models_yaml(fakes: dict[str, Provider], tiny_window: int = 512) -> str:
    return f"""
default_model: alpha
providers:
  - name: first
    base_url: {fakes["first"].base_url}
    models:
      - id: alpha
        upstream: alpha-upstream
      - id: tiny
        upstream: tiny-upstream
        context_window: {tiny_window}
        max_output_tokens: 100
  - name: second
    base_url: {fakes["second"].base_url}
    api_key_env: TEST_SECOND_KEY
    stream_usage: false
    models:
      - id: beta
        upstream: beta-upstream
  - name: short
    base_url: {fakes["short"].base_url}
    models:
      - id: gamma
"""


ROLES = """
roles:
  brief:
    name: Brief
    description: Short answers.
    system_prompt: Be brief.
  betty:
    name: Betty
    description: Pins beta.
    system_prompt: You are Betty.
    model: beta
"""


@pytest.fixture
def models_service(
    make_service: Callable[..., Service], fakes: dict[str, Provider], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Service:
    monkeypatch.setenv("TEST_SECOND_KEY", SECOND_KEY)
    (tmp_path / "models.yaml").write_text(models_yaml(fakes), encoding="utf-8")
    (tmp_path / "roles.yaml").write_text(ROLES, encoding="utf-8")
    return make_service(models_file=tmp_path / "models.yaml", roles_file=tmp_path / "roles.yaml", history_window=20)


@pytest.fixture
def http(models_service: Service) -> Iterator[httpx.Client]:
    with models_service.client() as client:
        yield client


def send(client: httpx.Client, session_id: str, message: str, **fields: Any) -> httpx.Response:
    return client.post("/chat/stream", json={"session_id": session_id, "message": message, **fields})


def chat_with(client: httpx.Client, session_id: str, message: str, model: str) -> list[Event]:
    from tests.sse import collect

    body = {"session_id": session_id, "message": message, "model": model}
    with client.stream("POST", "/chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        return collect(response)


def test_models_lists_every_model_with_its_provider_and_window(http: httpx.Client) -> None:
    body = http.get("/models").json()
    assert body["default_model"] == "alpha"
    assert body["models"] == [
        {"id": "alpha", "provider": "first", "context_window": 8192},
        {"id": "tiny", "provider": "first", "context_window": 512},
        {"id": "beta", "provider": "second", "context_window": 8192},
        {"id": "gamma", "provider": "short", "context_window": 8192},
    ]


def test_each_model_goes_to_its_own_provider_with_its_upstream_name_and_key(
    http: httpx.Client, fakes: dict[str, Provider]
) -> None:
    session_id = start_session(http, model="beta")
    events = chat(http, session_id, "hello second")
    assert events[0].data["model"] == "beta" and events[-1].type == "end"
    assert [r["model"] for r in fakes["second"].model.requests] == ["beta-upstream"]
    assert fakes["second"].model.keys == [f"Bearer {SECOND_KEY}"]
    assert fakes["first"].model.requests == []
    # The next message on the other model (the picker switched): the other provider answers.
    events = chat_with(http, session_id, "hello first", "alpha")
    assert events[0].data["model"] == "alpha" and events[-1].type == "end"
    assert [r["model"] for r in fakes["first"].model.requests] == ["alpha-upstream"]
    assert fakes["first"].model.keys == ["Bearer not-needed"]  # no key of the second provider's
    assert len(fakes["second"].model.requests) == 1
    answers = [m for m in history(http, session_id)["messages"] if m["role"] == "assistant"]
    assert [a["model"] for a in answers] == ["beta", "alpha"]  # the history shows who wrote what


def test_the_model_is_the_sends_else_the_sessions_else_the_personas_else_the_default(http: httpx.Client) -> None:
    def model_of(events: list[Event]) -> str:
        assert events[-1].type == "end"
        return str(events[0].data["model"])

    plain = start_session(http)
    assert model_of(chat(http, plain, "a")) == "alpha"  # the default
    pinned = start_session(http, "betty")
    assert model_of(chat(http, pinned, "b")) == "beta"  # the persona's
    session_over_persona = start_session(http, "betty", model="alpha")
    assert model_of(chat(http, session_over_persona, "c")) == "alpha"  # the session's
    assert model_of(chat_with(http, session_over_persona, "d", "beta")) == "beta"  # the send's
    assert model_of(chat(http, session_over_persona, "e")) == "alpha"  # a send's model is for that message


def test_an_unknown_model_is_400_listing_the_valid_ids_and_starts_nothing(http: httpx.Client) -> None:
    response = http.post("/chat/start", json={"model": "gpt-nope"})
    assert response.status_code == 400 and response.json()["code"] == "unknown_model"
    assert "alpha, tiny, beta, gamma" in response.json()["detail"]
    session_id = start_session(http)
    response = send(http, session_id, "hi", model="gpt-nope")
    assert response.status_code == 400 and response.json()["code"] == "unknown_model"
    assert history(http, session_id)["total"] == 0
    assert chat(http, session_id, "hi")[-1].type == "end"  # no lease was left behind


def test_usage_comes_from_a_provider_that_reports_it_and_is_totalled_per_user(
    http: httpx.Client, models_service: Service, fakes: dict[str, Provider]
) -> None:
    session_id = start_session(http)
    events = chat(http, session_id, "count me")
    usage = events[-1].data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert fakes["first"].model.requests[-1]["stream_options"] == {"include_usage": True}
    answer = history(http, session_id)["messages"][-1]
    assert answer["usage"] == usage
    # A provider configured with `stream_usage: false` is not asked, and reports nothing.
    events = chat_with(http, session_id, "not counted", "beta")
    assert "usage" not in events[-1].data and "stream_options" not in fakes["second"].model.requests[-1]
    assert "usage" not in history(http, session_id)["messages"][-1]
    second = chat(http, session_id, "count me too")[-1].data["usage"]
    totals = http.get("/usage").json()
    assert totals == {
        "prompt_tokens": usage["prompt_tokens"] + second["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"] + second["completion_tokens"],
        "turns": 2,
        "by_model": {
            "alpha": {
                "prompt_tokens": usage["prompt_tokens"] + second["prompt_tokens"],
                "completion_tokens": usage["completion_tokens"] + second["completion_tokens"],
                "turns": 2,
            }
        },
    }
    with models_service.client() as stranger:  # another user: totals of their own
        assert stranger.get("/usage").json() == {"prompt_tokens": 0, "completion_tokens": 0, "turns": 0, "by_model": {}}
    metrics = http.get("/metrics").text
    assert 'chat_tokens_total{kind="prompt",model="alpha"}' in metrics
    # And the operator sees the same with `chatctl usage`.
    settings = models_service.settings
    env = {"REDIS_URL": str(settings.redis_url), "REDIS_PREFIX": settings.redis_prefix, "REDIS_CLUSTER": "false"}
    result = CliRunner().invoke(chatctl, ["usage", "--json"], env={**env, "DATA_DIR": str(settings.data_dir)})
    assert result.exit_code == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["total"] == {k: totals[k] for k in ("prompt_tokens", "completion_tokens", "turns")}
    assert list(report["users"].values()) == [totals]


def test_the_prompt_drops_the_oldest_messages_to_fit_a_small_context_window(
    http: httpx.Client, fakes: dict[str, Provider]
) -> None:
    session_id = start_session(http, "brief", model="tiny")  # 512 tokens, 100 kept for the answer
    texts = [f"[[chunks=1]] message {n} " + "x" * 120 for n in range(8)]
    for text in texts:
        events = chat(http, session_id, text)
        assert events[-1].type == "end"
    context = events[0].data["context"]
    stored_before = 14  # seven turns before the last one
    assert context["messages"] + context["dropped"] == stored_before and context["dropped"] > 0
    sent = fakes["first"].model.requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."} and sent[-1]["content"] == texts[-1]
    assert len(sent) == 2 + context["messages"]
    stored = history(http, session_id)["messages"][:stored_before]
    assert [m["content"] for m in sent[1:-1]] == [m["content"] for m in stored[context["dropped"] :]]  # the newest
    assert sum(message_tokens(m) for m in sent) + 3 + 100 <= 512
    assert fakes["first"].model.requests[-1]["max_tokens"] == 100


def test_a_message_that_cannot_fit_alone_is_413_and_leaves_nothing_behind(
    http: httpx.Client, models_service: Service, redis_server: RedisProcess
) -> None:
    session_id = start_session(http, "brief", model="tiny")
    too_long = "y" * 1500  # about 500 tokens: with 100 for the answer, more than 512
    for fields in ({}, {"model": "tiny"}):  # the session's model (after admission), the send's (before)
        response = send(http, session_id, too_long, **fields)
        assert response.status_code == 413 and response.json()["code"] == "too_long_for_model"
    assert history(http, session_id)["total"] == 0 and history(http, session_id)["running_turn_id"] is None
    keys = KeySpace(models_service.settings.redis_prefix)
    client = redis.Redis(port=redis_server.port)
    try:
        turn_streams = [k for k in client.scan_iter(match=keys.all_keys_pattern()) if b":t:" + session_id.encode() in k]
    finally:
        client.close()
    assert turn_streams == []  # no orphan turn stream
    assert chat(http, session_id, "short")[-1].type == "end"  # and no lease: the session works at once


def test_context_length_exceeded_is_retried_once_with_half_the_history(
    http: httpx.Client, fakes: dict[str, Provider]
) -> None:
    session_id = start_session(http, "brief", model="gamma")  # its provider refuses prompts over 400 chars
    for n in range(4):  # four turns of 79 characters: each prompt fits
        assert chat(http, session_id, f"[[chunks=1]] m{n} " + "z" * 60)[-1].type == "end"
    assert len(fakes["short"].model.requests) == 4
    events = chat(http, session_id, "[[chunks=1]] last " + "q" * 100)  # 443 characters with all the history
    assert events[0].data["context"] == {"messages": 8, "dropped": 0}  # what the estimate let through
    assert events[-1].type == "end", events[-1].data
    assert events[-1].data["context"] == {"messages": 4, "dropped": 4, "retried": True}
    assert len(fakes["short"].model.requests) == 6  # refused once, then answered
    assert len(fakes["short"].model.requests[-1]["messages"]) == 1 + 4 + 1
    assert answer_text(events) == "w0 "


def test_a_wrong_key_is_upstream_auth_naming_the_provider_not_the_key(
    make_service: Callable[..., Service], fakes: dict[str, Provider], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SECOND_KEY", "sk-wrong-key-456")
    (tmp_path / "models.yaml").write_text(models_yaml(fakes), encoding="utf-8")
    service = make_service(models_file=tmp_path / "models.yaml")
    with service.client() as client:
        session_id = start_session(client, model="beta")
        error = chat(client, session_id, "hi")[-1].data
    assert error["code"] == "upstream_auth" and "'second'" in error["content"]
    assert "sk-wrong" not in error["content"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("providers: []", "providers: List should have at least 1 item"),
        ("providers:\n  - name: p\n    models: [{id: m}]", "provider 'p': base_url: Field required"),
        (
            "providers:\n  - name: p\n    base_url: http://x/v1\n    models: [{id: m, context_window: -5}]",
            "provider 'p': models[0].context_window: Input should be greater than or equal to 256",
        ),
        (
            "providers:\n  - name: p\n    base_url: http://x/v1\n    api_key_env: NO_SUCH_VAR_X\n    models: [{id: m}]",
            "provider 'p': api_key_env: the variable NO_SUCH_VAR_X is not set",
        ),
        (
            "default_model: z\nproviders:\n  - name: p\n    base_url: http://x/v1\n    models: [{id: m}]",
            "default_model: 'z' is not one of the models (m)",
        ),
        (
            "providers:\n  - {name: p, base_url: 'http://x/v1', models: [{id: m}]}\n"
            "  - {name: q, base_url: 'http://y/v1', models: [{id: m}]}",
            "provider 'q': models: id 'm' is listed twice",
        ),
        ("providers: [oops", "not valid YAML"),
    ],
)
def test_a_bad_models_file_stops_start_up_naming_the_file_provider_and_field(
    make_settings: Callable[..., Settings], tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelsFileError) as failure:
        create_app(make_settings(models_file=path))
    assert str(path) in str(failure.value) and expected in str(failure.value)


def test_a_roles_file_persona_must_pin_a_listed_model(
    make_settings: Callable[..., Settings], fakes: dict[str, Provider], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SECOND_KEY", SECOND_KEY)
    (tmp_path / "models.yaml").write_text(models_yaml(fakes), encoding="utf-8")
    roles = tmp_path / "roles.yaml"
    roles.write_text(ROLES.replace("model: beta", "model: gpt-unknown"), encoding="utf-8")
    with pytest.raises(ModelsFileError, match="role 'betty': model 'gpt-unknown' is not one of the models"):
        create_app(make_settings(models_file=tmp_path / "models.yaml", roles_file=roles))
