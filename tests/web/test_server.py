"""The HTTP server's own bounds (personachat.web.server), through real sockets: request heads
of any size are refused early and cheaply, slow or idle connections are closed, a client that
reads nothing is disconnected while its turn goes on, and each refusal is JSON."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import Service, history, start_session
from tests.servers import read_until_closed

OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def connect(service: Service, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    OPEN.append(sock)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", int(service.base_url.rsplit(":", 1)[1])))
    sock.settimeout(15)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """The status and JSON body of the one response the server sends before closing."""
    data = read_until_closed(sock, seconds=60)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head, "the server closed the connection without an answer"
    return int(head.split(b" ")[1]), json.loads(body)


def is_closed(sock: socket.socket) -> bool:
    """True once the server has closed it (what it sent before closing is ignored)."""
    sock.settimeout(0.05)
    try:
        while True:
            piece = sock.recv(65_536)
            if not piece:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("size", [1_000_000, 100_000_000])
def test_a_huge_header_is_431_at_once_and_other_requests_go_on(service: Service, size: int) -> None:
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    started = time.monotonic()

    def send_header() -> None:
        chunk = b"a" * 1_000_000
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection after its 431: stop sending

    sender = threading.Thread(target=send_header, daemon=True)
    sender.start()
    slowest = 0.0
    with service.client(timeout=10) as other:
        for _ in range(20):  # another client's requests meanwhile
            before = time.monotonic()
            assert other.get("/healthz").status_code == 200
            slowest = max(slowest, time.monotonic() - before)
    status, body = read_response(sock)
    refused_after = time.monotonic() - started
    sender.join(timeout=30)
    assert status == 431 and body["code"] == "headers_too_large", body
    assert refused_after < 3, refused_after
    assert slowest < 0.5, slowest
    print(f"{size} byte header: 431 after {refused_after:.3f}s; slowest other request {slowest:.3f}s")


def test_headers_within_the_limit_pass(make_service: Callable[..., Service]) -> None:
    service = make_service(max_header_bytes=8_192)
    with service.client() as client:
        assert client.get("/healthz", headers={"X-Fine": "a" * 7_000}).status_code == 200
        response = client.get("/healthz", headers={"X-Big": "a" * 9_000})
        assert response.status_code == 431 and response.json()["code"] == "headers_too_large"


def test_a_message_too_long_for_a_get_url_is_414_json_with_a_hint_to_post(
    service: Service, client: httpx.Client
) -> None:
    session_id = start_session(client)
    message = "你" * 8_000  # within MAX_MESSAGE_CHARS, but 72 KB once percent-encoded
    query = httpx.QueryParams({"session_id": session_id, "message": message})
    sock = connect(service)  # by hand: httpx itself refuses such a URL
    sock.sendall(f"GET /chat/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status, body = read_response(sock)
    assert status == 414, body
    assert body["code"] == "url_too_long" and "POST /chat/stream" in body["detail"]
    response = client.post("/chat/stream", json={"session_id": session_id, "message": message})
    assert response.status_code == 200  # the same message by POST is fine
    assert history(client, session_id)["messages"][0]["content"] == message


def test_a_request_the_parser_cannot_read_is_400_json(service: Service) -> None:
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
    status, body = read_response(sock)
    assert status == 400 and body["code"] == "invalid_request"


def test_idle_half_sent_and_kept_alive_connections_are_closed(make_service: Callable[..., Service]) -> None:
    service = make_service(request_timeout_seconds=1, keep_alive_seconds=1)
    idle = [connect(service) for _ in range(20)]
    half_sent = [connect(service) for _ in range(20)]
    for sock in half_sent:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    kept_alive = [connect(service) for _ in range(20)]
    for sock in kept_alive:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    slow = connect(service)  # a slow-loris: a byte of header every 0.2 s, never the end
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        try:
            slow.sendall(b"x")
        except OSError:
            break
        time.sleep(0.2)
    time.sleep(max(0.0, deadline - time.monotonic()))
    every = idle + half_sent + kept_alive + [slow]
    open_after = sum(not is_closed(sock) for sock in every)
    assert open_after == 0, f"{open_after}/{len(every)} connections still open after 2.5 s"


def test_a_slow_header_or_body_is_408_json(make_service: Callable[..., Service]) -> None:
    service = make_service(request_timeout_seconds=1)
    sock = connect(service)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    status, body = read_response(sock)
    assert status == 408 and body["code"] == "request_timeout"
    sock = connect(service)
    head = (
        b"POST /chat/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    sock.sendall(head + b'{"role":')
    started = time.monotonic()
    status, body = read_response(sock)
    assert status == 408 and body["code"] == "request_timeout", body
    assert time.monotonic() - started < 3


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_disconnected_and_its_turn_is_stored(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(send_timeout_seconds=1, max_answer_chars=10_000_000)
    with service.client() as client:
        session_id = start_session(client)
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        body = json.dumps(
            {"session_id": session_id, "message": "[[chunks=10000]] [[chunk_chars=1000]] [[delay_ms=0]]"}
        ).encode()
        sock = connect(service, rcvbuf=4_096)
        sock.sendall(
            b"POST /chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(3)  # read nothing for longer than SEND_TIMEOUT_SECONDS
        received = read_until_closed(sock)
        print(f"a client that read nothing for 3 s then got {len(received)} bytes before the close")
        assert received.startswith(b"HTTP/1.1 200")
        # Only what the kernels had buffered: the reader was closed before the turn's end.
        assert b'"type":"end"' not in received and not received.endswith(b"0\r\n\r\n")
        for _ in range(200):  # the turn goes on without its reader, and is stored
            if history(client, session_id)["total"] == 2:
                break
            time.sleep(0.1)
        messages = history(client, session_id)["messages"]
        assert len(messages) == 2 and messages[1]["content"].startswith("w0 x")
