"""Every error is JSON `{"code", "detail"}`, the framework's too (personachat.web.errors), and
an unhandled error is logged once."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from config import Settings
from main import create_app
from tests.conftest import start_session
from tests.servers import ThreadedServer
from tests.web.test_validation import assert_error


@pytest.mark.parametrize("seq", ["²", "³", "1¹"])
def test_a_last_event_id_with_a_non_ascii_digit_is_422(client: httpx.Client, seq: str) -> None:
    session_id = start_session(client)
    # Header bytes are Latin-1: b"\xb2" is "²", which str.isdigit() takes for a digit.
    headers = [(b"Last-Event-ID", f"0123456789abcdef:{seq}".encode("latin-1"))]
    response = client.get("/chat/stream", params={"session_id": session_id}, headers=headers)
    assert_error(response, 422, "invalid_request")
    response = client.post("/chat/stream", json={"session_id": session_id}, headers=headers)
    assert_error(response, 422, "invalid_request")


def test_framework_errors_have_a_code(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/path"), 404, "not_found")
    assert_error(client.get("/static/no-such-file.js"), 404, "not_found")
    response = assert_error_response(client.put("/chat/stream"), 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    response = assert_error_response(client.post("/chat/sessions"), 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    response = assert_error_response(client.post("/static/css/app.css"), 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"


def assert_error_response(response: httpx.Response, status: int, code: str) -> httpx.Response:
    assert_error(response, status, code)
    return response


@pytest.mark.parametrize(
    "body",
    [b"[" * 50_000 + b"]" * 50_000, b'{"session_id": "\xff\xfe", "message": "x"}', b"\xc3\x28"],
    ids=["nested too deep", "invalid utf-8", "invalid utf-8 alone"],
)
def test_a_body_that_is_not_json_is_422_with_a_code(client: httpx.Client, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/chat/stream", content=body, headers=headers), 422, "invalid_request")
    assert_error(client.post("/chat/start", content=body, headers=headers), 422, "invalid_request")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unhandled_error_is_500_json_and_logged_once(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    server = ThreadedServer(app)  # applies uvicorn's logging config: listen after it
    records = Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "personachat")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        server.start()
        with httpx.Client(base_url=server.base_url) as client:
            assert_error(client.get("/boom"), 500, "internal_error")
    finally:
        server.stop()
        for logger in loggers:
            logger.removeHandler(records)
    tracebacks = [record for record in records.records if record.exc_info]
    assert len(tracebacks) == 1, [record.getMessage() for record in tracebacks]
    assert "GET /boom" in tracebacks[0].getMessage()
