"""Fixtures: a Redis server of our own, the fake OpenAI-compatible model over HTTP, and the
service under a real uvicorn server, each test under its own Redis key prefix."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from main import create_app
from personachat.demo_model import DemoModel
from tests.servers import RedisProcess, ThreadedServer
from tests.sse import Event, collect

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FakeModel:
    model: DemoModel
    base_url: str

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.model.requests


@dataclass
class Service:
    base_url: str
    settings: Settings
    app: Any = None

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, **{"timeout": 30, **options})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeModel]:
    model = DemoModel(record=True, directives=True)
    server = ThreadedServer(model.app).start()
    yield FakeModel(model, server.base_url + "/v1")
    server.stop()


@pytest.fixture
def model(fake_model: FakeModel) -> FakeModel:
    fake_model.requests.clear()
    return fake_model


@pytest.fixture
def make_settings(redis_server: RedisProcess, model: FakeModel, tmp_path: Path) -> Callable[..., Settings]:
    prefix = "test" + secrets.token_hex(4)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "redis_prefix": prefix,
            "openai_api_key": "test-key",
            "openai_base_url": model.base_url,
            "openai_model": "fake-model",
            "data_dir": tmp_path,
            "secret_key": "test-secret-key",
            "rate_limit_per_minute": 1000,
            "anon_identities_per_minute": 0,
            "upstream_max_retries": 0,
            "auto_title": False,  # a title request would follow each first answer (tests/test_titles.py)
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def make_service(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Service]]:
    servers: list[ThreadedServer] = []

    def make(**overrides: Any) -> Service:
        settings = make_settings(**overrides)
        app = create_app(settings)
        server = ThreadedServer(app).start()
        servers.append(server)
        return Service(server.base_url, settings, app)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as http:
        yield http


def write_models_file(path: Path, base_url: str, *model_ids: str, **options: Any) -> Path:
    """A MODELS_FILE with one provider (`fake`, at `base_url`) serving `model_ids`."""
    lines = ["providers:", "  - name: fake", f"    base_url: {base_url}", "    models:"]
    lines += [f"      - id: {model_id}" for model_id in model_ids]
    lines += [f"        {name}: {value}" for name, value in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_session(client: httpx.Client, role: str | None = None, **body: Any) -> str:
    response = client.post("/chat/start", json={"role": role, **body} if role else (body or None))
    assert response.status_code == 200, response.text
    return str(response.json()["session_id"])


def chat(client: httpx.Client, session_id: str, message: str, role: str | None = None) -> list[Event]:
    """Send a message with POST /chat/stream and read the whole stream."""
    body = {"session_id": session_id, "message": message, **({"role": role} if role else {})}
    with client.stream("POST", "/chat/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return collect(response)


def history(client: httpx.Client, session_id: str) -> dict[str, Any]:
    response = client.get("/chat/history", params={"session_id": session_id})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
