"""REST for scripts (delete all sessions, Markdown export) and operations (metrics, logs)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from config import Settings
from personachat.admin.cli import app
from personachat.logs import JsonFormatter, RequestIdFilter
from tests.conftest import ROOT, Service, chat, history, start_session
from tests.servers import RedisProcess, ServiceProcess
from tests.sse import iter_events

SLOW = "[[chunks=200]] [[delay_ms=25]]"  # a five-second answer, to have a turn running


def test_delete_all_sessions_skips_the_running_one_and_reports_it(service: Service) -> None:
    with service.client() as alice, service.client() as bob:
        idle = [start_session(alice) for _ in range(3)]
        chat(alice, idle[0], "hello")
        busy = start_session(alice)
        bobs = start_session(bob)
        with alice.stream("POST", "/chat/stream", json={"session_id": busy, "message": SLOW}) as stream:
            assert next(iter_events(stream)).type == "start"
            response = alice.delete("/chat/sessions")
            assert response.status_code == 200
            assert response.json() == {"deleted": 3, "skipped_running": [busy]}
            assert alice.post("/chat/stop", params={"session_id": busy}).status_code == 200
        listed = alice.get("/chat/sessions").json()
        assert [s["session_id"] for s in listed["sessions"]] == [busy]
        for session_id in idle:
            assert alice.get("/chat/history", params={"session_id": session_id}).status_code == 404
        assert history(bob, bobs)["session_id"] == bobs  # another user's session is untouched

        assert alice.delete("/chat/sessions").json() == {"deleted": 1, "skipped_running": []}
        assert alice.get("/chat/sessions").json()["total"] == 0
        assert alice.delete("/chat/sessions").json() == {"deleted": 0, "skipped_running": []}


def test_history_as_markdown(client: httpx.Client) -> None:
    session_id = start_session(client, "teacher", title="Fractions")
    chat(client, session_id, "What is 1/2 + 1/4?")
    response = client.get("/chat/history", params={"session_id": session_id, "format": "markdown"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    text = response.text
    assert text.startswith("# Fractions\n")
    assert f"- Session: `{session_id}`" in text and "- Persona: teacher" in text
    user_at = text.index("## User · ")
    assert text.index("What is 1/2 + 1/4?") > user_at
    assert text.index("## Assistant (teacher) · ") > user_at

    assert client.get("/chat/history", params={"session_id": session_id, "format": "json"}).json()["total"] == 2
    bad = client.get("/chat/history", params={"session_id": session_id, "format": "html"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    with httpx.Client(base_url=str(client.base_url)) as stranger:
        foreign = stranger.get("/chat/history", params={"session_id": session_id, "format": "markdown"})
        assert foreign.status_code == 404


def test_openapi_documents_the_script_endpoints(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "skipped_running" in paths["/chat/sessions"]["delete"]["description"]
    history_get = paths["/chat/history"]["get"]
    assert "text/markdown" in history_get["responses"]["200"]["content"]
    assert any(p["name"] == "format" for p in history_get["parameters"])


# -- metrics ---------------------------------------------------------------------------------------


def scrape(http: httpx.Client, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_requests_turns_chunks_and_errors(client: httpx.Client) -> None:
    session_id = start_session(client)
    before = scrape(client)
    events = chat(client, session_id, "[[chunks=7]] [[delay_ms=10]]")  # paced: one event per chunk
    assert events[-1].type == "end"
    failed = chat(client, session_id, "[[status=500]]")
    assert failed[-1].data["code"] == "upstream_error"
    assert client.get("/chat/history", params={"session_id": "0" * 32}).status_code == 404
    after = scrape(client)

    assert delta(before, after, "chat_turns_started_total") == 2
    assert delta(before, after, "chat_turns_completed_total", finish_reason="stop") == 1
    assert delta(before, after, "chat_turns_failed_total", code="upstream_error") == 1
    assert delta(before, after, "chat_upstream_errors_total", code="upstream_error") == 1
    assert delta(before, after, "chat_chunks_relayed_total") == 7
    assert delta(before, after, "chat_time_to_first_chunk_seconds_count") == 1
    assert delta(before, after, "chat_turn_duration_seconds_count") == 2
    assert delta(before, after, "chat_http_requests_total", method="POST", route="/chat/stream", status="200") == 2
    assert delta(before, after, "chat_http_requests_total", method="GET", route="/chat/history", status="404") == 1
    assert delta(before, after, "chat_http_request_duration_seconds_count", method="POST", route="/chat/stream") == 2
    assert after[("chat_turns_running", ())] == 0
    assert after[("chat_streams_open", ())] == 0
    assert ("chat_redis_errors_total", ()) in after


def test_metrics_can_be_turned_off_or_protected(make_service: Callable[..., Service]) -> None:
    with make_service(metrics_enabled=False).client() as http:
        assert http.get("/metrics").status_code == 404
    with make_service(metrics_token="s3cret-token").client() as http:
        refused = http.get("/metrics")
        assert refused.status_code == 401 and "s3cret" not in refused.text
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert scrape(http, Authorization="Bearer s3cret-token")


# -- request ids and logs ---------------------------------------------------------------------------


def test_request_id_is_returned_and_a_sane_one_is_kept(client: httpx.Client) -> None:
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 16
    assert client.get("/healthz", headers={"X-Request-ID": "job-42.a"}).headers["x-request-id"] == "job-42.a"
    odd = client.get("/healthz", headers={"X-Request-ID": "no spaces <or> tags"}).headers["x-request-id"]
    assert odd != "no spaces <or> tags" and len(odd) == 16


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_log() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_logs_have_a_line_per_request_and_per_turn_without_contents(
    json_log: Lines, make_service: Callable[..., Service], chatctl_key: str
) -> None:
    service = make_service()
    secret_message = "my-secret-message-text"
    with service.client(headers={"Authorization": f"Bearer {chatctl_key}", "X-Request-ID": "req-1"}) as http:
        session_id = start_session(http)
    with service.client(headers={"Authorization": f"Bearer {chatctl_key}", "X-Request-ID": "req-2"}) as http:
        chat(http, session_id, f"{secret_message} [[chunks=3]] [[delay_ms=10]]")
    with service.client() as anonymous:
        start_session(anonymous)
        cookie = next(iter(anonymous.cookies.values()))

    records = [orjson.loads(line) for line in json_log.lines]
    requests = [r for r in records if r["logger"] == "personachat.access"]
    stream = next(r for r in requests if r["route"] == "/chat/stream")
    assert stream["method"] == "POST" and stream["status"] == 200 and stream["ms"] > 0
    assert stream["request_id"] == "req-2"
    ended = next(r for r in records if r["message"] == "turn ended")
    assert ended["request_id"] == "req-2" and ended["session_id"] == session_id
    assert ended["outcome"] == "stop" and ended["chunks"] == 3 and ended["seconds"] > 0 and ended["turn_id"]
    assert ended["role"] and ended["model"] and ended["events"] == 5  # start, 3 chunks, end
    assert not any(r["message"] == "turn started" for r in records)  # one line per turn
    everything = "\n".join(json_log.lines)
    assert secret_message not in everything and chatctl_key not in everything and cookie not in everything


@pytest.fixture
def chatctl_key(redis_server: RedisProcess, make_settings: Callable[..., Settings], tmp_path: Path) -> str:
    env = {"REDIS_URL": redis_server.url, "REDIS_PREFIX": make_settings().redis_prefix, "DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["keys", "create", "--user", "logger", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    return str(orjson.loads(result.stdout)["key"])


def test_several_workers_share_metrics_and_log_json(redis_server: RedisProcess, tmp_path: Path) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": "workers" + secrets.token_hex(3),
        "DATA_DIR": str(tmp_path),
        "WORKERS": "2",
        "LOG_FORMAT": "json",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
    }
    server = ServiceProcess(env, ROOT).start()
    try:
        key = ("chat_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
        # A new connection per request, so that both workers take some of them.
        with httpx.Client(
            base_url=server.base_url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            before = scrape(http).get(key, 0.0)
            for _ in range(40):
                assert http.get("/healthz").status_code == 200
            for _ in range(6):  # whichever worker answers, it counts every worker's requests
                assert scrape(http)[key] - before == 40
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("{")]
    access = [orjson.loads(line) for line in lines if '"personachat.access"' in line]
    assert len([a for a in access if a["route"] == "/healthz"]) >= 40
    assert all(a["request_id"] for a in access)
    assert (tmp_path / "metrics").is_dir()
