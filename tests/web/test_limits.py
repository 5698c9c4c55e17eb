"""Request bodies are refused before they are held (personachat.web.limits), and an answer has
a size cap (MAX_ANSWER_CHARS): a client cannot make the service hold what it likes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FakeModel, Service, chat, history, start_session
from tests.servers import RedisProcess, ServiceProcess
from tests.test_failures import service_env

MB = 1_000_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def send_body(port: int, path: str, size: int, *, chunked: bool, cookie: str = "") -> tuple[int, dict[str, str]]:
    """POST `size` bytes of JSON-looking body; the status and JSON of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n".encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nCookie: {cookie}\r\n".encode()
        + framing
        + b"\r\n"
    )

    def send() -> None:
        piece = b"[" * 1_000_000
        try:
            for _ in range(size // len(piece)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        except OSError:
            pass  # refused and closed by the server: stop sending

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while True:
            piece = sock.recv(65_536)
            if not piece:
                break
            data += piece
    except ConnectionResetError:
        pass
    sender.join(timeout=30)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture
def process(redis_server: RedisProcess, model: FakeModel, tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(service_env(redis_server, model, tmp_path), Path(__file__).resolve().parents[2])
    service.start()
    try:
        yield service
    finally:
        service.stop()


def test_large_bodies_are_refused_before_they_are_held(process: ServiceProcess) -> None:
    assert process.process is not None
    pid, port = process.process.pid, process.port
    with httpx.Client(base_url=process.base_url, timeout=30) as client:
        session_id = start_session(client)
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        chat(client, session_id, "warm up")
        before = rss_mb(pid)
        results: list[tuple[int, dict[str, str]]] = []

        def one(chunked: bool) -> None:
            results.append(send_body(port, "/chat/stream", 50 * MB, chunked=chunked, cookie=cookie))

        # 8 bodies of 50 MB at once, announced by Content-Length or chunked (which announces nothing).
        threads = [threading.Thread(target=one, args=(index % 2 == 0,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        growth = rss_mb(pid) - before
        print(f"8 x 50 MB bodies: server RSS {before:.0f} MB -> +{growth:.1f} MB")
        assert [status for status, _ in results] == [413] * 8
        assert all(body["code"] == "body_too_large" for _, body in results)
        assert growth < 40, growth
        chat(client, session_id, "still fine")  # the service goes on
        assert history(client, session_id)["total"] == 4


def test_a_body_at_the_limit_passes_and_one_byte_more_is_413(make_service: Callable[..., Service]) -> None:
    service = make_service(max_body_bytes=2_000)
    with service.client() as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": ""}
        body["message"] = "x" * (2_000 - len(json.dumps(body)))
        exact = json.dumps(body).encode()
        assert len(exact) == 2_000
        headers = {"content-type": "application/json"}
        with client.stream("POST", "/chat/stream", content=exact, headers=headers) as response:
            assert response.status_code == 200
            response.read()
        response = client.post("/chat/stream", content=exact + b" ", headers=headers)
        assert response.status_code == 413 and response.json()["code"] == "body_too_large"
        assert response.headers["connection"] == "close"

        def chunked() -> Iterator[bytes]:  # no Content-Length: refused while reading
            yield exact[:1_000]
            yield exact[1_000:] + b" "

        response = client.post("/chat/stream", content=chunked(), headers=headers)
        assert response.status_code == 413 and response.json()["code"] == "body_too_large"


def test_the_default_body_limit_fits_the_longest_message_in_any_json_form(make_service: Callable[..., Service]) -> None:
    service = make_service(max_message_chars=1_000)
    with service.client() as client:
        session_id = start_session(client)
        # Python's json escapes every non-ASCII character: an emoji is 12 bytes, "\\ud83d\\ude00".
        body = json.dumps({"session_id": session_id, "message": "😀" * 1_000}).encode()
        assert len(body) > 12_000
        with client.stream("POST", "/chat/stream", content=body, headers={"content-type": "application/json"}) as r:
            assert r.status_code == 200
            r.read()


def test_an_answer_is_cut_at_max_answer_chars_with_finish_reason_length(make_service: Callable[..., Service]) -> None:
    service = make_service(max_answer_chars=100)
    with service.client() as client:
        session_id = start_session(client)
        events = chat(client, session_id, "[[chunks=500]]")
        assert events[-1].type == "end" and events[-1].data["finish_reason"] == "length"
        streamed = "".join(event.data["content"] for event in events if event.type == "chunk")
        stored = history(client, session_id)["messages"][1]["content"]
        assert len(streamed) == 100 and stored == streamed
        assert chat(client, session_id, "[[chunks=5]]")[-1].data["finish_reason"] == "stop"  # shorter: whole


def test_clients_that_read_nothing_cost_the_server_little(
    redis_server: RedisProcess, model: FakeModel, tmp_path: Path
) -> None:
    env = service_env(redis_server, model, tmp_path, SEND_TIMEOUT_SECONDS="2", MAX_CONCURRENT_TURNS_PER_USER="10")
    process = ServiceProcess(env, Path(__file__).resolve().parents[2]).start()
    try:
        assert process.process is not None
        with httpx.Client(base_url=process.base_url, timeout=30) as client:
            sessions = [start_session(client) for _ in range(10)]
            cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
            chat(client, start_session(client), "warm up")
            before = rss_mb(process.process.pid)
            readers = []
            for session_id in sessions:  # 10 long answers, to clients that never read
                body = json.dumps({"session_id": session_id, "message": "[[chunks=300000]] [[delay_ms=0]]"}).encode()
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
                sock.connect(("127.0.0.1", process.port))
                sock.sendall(
                    b"POST /chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                readers.append(sock)
            peak = before
            for _ in range(100):  # until every answer is stored (each is cut at MAX_ANSWER_CHARS)
                peak = max(peak, rss_mb(process.process.pid))
                if all(history(client, session_id)["total"] == 2 for session_id in sessions):
                    break
                time.sleep(0.2)
            time.sleep(3)  # past SEND_TIMEOUT_SECONDS: the readers are closed
            after = rss_mb(process.process.pid)
            for sock in readers:
                sock.close()
            peak_growth, growth = peak - before, after - before
            print(f"10 clients reading nothing: RSS {before:.0f} MB, peak +{peak_growth:.1f}, after +{growth:.1f}")
            totals = [history(client, session_id)["total"] for session_id in sessions]
            assert totals == [2] * 10, (totals, process.log.read_text()[-3000:])
            assert peak_growth < 100 and growth < 60
    finally:
        process.stop()
