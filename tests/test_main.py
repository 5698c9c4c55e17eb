"""The app's life: on SIGTERM the running answers end with `server_shutdown` at once, and a
message that arrives while the server drains is refused with 503, not admitted."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, FakeModel, start_session
from tests.servers import RedisProcess, ServiceProcess
from tests.sse import Event, iter_events


def service_env(redis: RedisProcess, model: FakeModel, tmp_path: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "REDIS_PREFIX": "test" + secrets.token_hex(4),
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": model.base_url,
        "SECRET_KEY": "process-test-secret",
        "DATA_DIR": str(tmp_path),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "LOG_LEVEL": "warning",
    }


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_ends_streams_at_once_and_refuses_a_message_that_arrives_while_draining(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path, workers: str
) -> None:
    env = {**service_env(redis_server, model, tmp_path), "WORKERS": workers}
    service = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=service.base_url, timeout=30) as client:
            streaming, waiting = start_session(client), start_session(client)
            cookie = f"chat_identity={client.cookies['chat_identity']}"
            body = json.dumps({"session_id": waiting, "message": "sent while the server shuts down"}).encode()
            late = socket.create_connection(("127.0.0.1", service.port))
            events: list[Event] = []
            message = {"session_id": streaming, "message": "[[chunks=500]] [[delay_ms=20]]"}
            with client.stream("POST", "/chat/stream", json=message) as response:
                for event in iter_events(response):
                    events.append(event)
                    if len(events) == 3:
                        # A request on its way in: headers sent, the body not yet.
                        late.sendall(
                            b"POST /chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            + f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                            + body[:10]
                        )
                        time.sleep(0.2)
                        service.signal(signal.SIGTERM)
                        signalled = time.monotonic()
                        time.sleep(1.0)  # with workers, the parent passes SIGTERM on within 0.5 s
                        late.sendall(body[10:])
            ended_after = time.monotonic() - signalled  # the 1 s pause included
            assert events[-1].type == "error" and events[-1].data["code"] == "server_shutdown"
            assert ended_after < 2.0, ended_after
            status, headers, answer = read_response(late)
            late.close()
            assert status == 503, answer
            assert json.loads(answer) == {
                "code": "server_shutdown",
                "detail": "The server is restarting; send your message again in a moment.",
            }
            assert headers["retry-after"] == "2"
            assert service.wait(timeout=30) == 0
    finally:
        service.stop()
    keys = redis_server.client().keys(f"{env['REDIS_PREFIX']}:*:m:{waiting}")
    assert keys == []  # the refused message was never admitted, nothing stored
