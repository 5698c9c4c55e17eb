"""GET /chat/ws through a real uvicorn, a real Redis and the fake model, driven by the
`websockets` client library (and, where a client must misbehave, a raw socket)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from config import Settings
from main import create_app
from tests.conftest import Service, history, start_session
from tests.servers import ThreadedServer, read_until_closed
from tests.test_identity import create_api_key
from tests.web.test_ops import scrape

LONG = "[[chunks=80]] [[delay_ms=25]]"  # about 2 s of answer


def ws_url(service: Service) -> str:
    return service.base_url.replace("http://", "ws://") + "/chat/ws"


def cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


@contextmanager
def open_socket(service: Service, client: httpx.Client | None = None, **headers: str) -> Iterator[ClientConnection]:
    extra = {"Cookie": cookie_header(client)} if client is not None else {}
    with connect(ws_url(service), additional_headers={**extra, **headers}, open_timeout=10) as ws:
        yield ws


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), names
    return dict(pairs)


def receive(ws: ClientConnection, timeout: float = 15) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=timeout), object_pairs_hook=no_duplicate_keys)
    return frame


def until_final(ws: ClientConnection) -> list[dict[str, Any]]:
    """The frames up to the turn's final event, `end` or `error` (a refusal has no `id`)."""
    frames = []
    while True:
        frame = receive(ws)
        frames.append(frame)
        if frame["type"] == "end" or (frame["type"] == "error" and "id" in frame):
            return frames


def answer_of(frames: list[dict[str, Any]]) -> str:
    return "".join(frame["content"] for frame in frames if frame["type"] == "chunk")


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [int(frame["id"].rpartition(":")[2]) for frame in frames]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- a turn, a stop, a resume -----------------------------------------------------------------


def test_a_turn_over_the_socket_is_streamed_with_ids_and_stored(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        send(ws, type="message", session_id=session_id, message="hello there")
        frames = until_final(ws)
    assert [frame["type"] for frame in (frames[0], frames[-1])] == ["start", "end"]
    assert {frame["session_id"] for frame in frames} == {session_id}
    turn_id = frames[-1]["turn_id"]
    assert all(frame["id"].startswith(turn_id + ":") for frame in frames)
    assert seqs(frames) == list(range(1, len(frames) + 1))
    messages = history(client, session_id)["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant"]
    assert messages[1]["content"] == answer_of(frames) != ""
    assert messages[1]["turn_id"] == turn_id


def test_turns_of_several_sessions_go_one_after_another_on_one_socket(client: httpx.Client, service: Service) -> None:
    first, second = start_session(client), start_session(client, role="programmer")
    with open_socket(service, client) as ws:
        for session_id in (first, second, first):
            send(ws, type="message", session_id=session_id, message=f"to {session_id}")
            frames = until_final(ws)
            assert frames[-1]["type"] == "end" and {frame["session_id"] for frame in frames} == {session_id}
    assert history(client, first)["total"] == 4 and history(client, second)["total"] == 2
    assert history(client, second)["role"] == "programmer"


def test_a_stop_ends_the_answer_and_is_acknowledged(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        send(ws, type="message", session_id=session_id, message=LONG)
        assert receive(ws)["type"] == "start"
        assert receive(ws)["type"] == "chunk"
        send(ws, type="stop", session_id=session_id)
        frames = until_final(ws)
        if not any(frame["type"] == "stopped" for frame in frames):
            frames.append(receive(ws))  # the ack comes once the turn has ended, after its `end`
    acks = [frame for frame in frames if frame["type"] == "stopped"]
    assert len(acks) == 1 and acks[0]["stopped"] is True and acks[0]["session_id"] == session_id
    end = [frame for frame in frames if frame["type"] == "end"]
    assert len(end) == 1 and end[0]["finish_reason"] == "stopped"
    answer = history(client, session_id)["messages"][-1]
    assert answer["stopped"] is True and answer["turn_id"] == acks[0]["turn_id"]


def test_closing_the_socket_stops_nothing_and_a_second_socket_resumes_without_a_duplicate(
    client: httpx.Client, service: Service
) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        send(ws, type="message", session_id=session_id, message=LONG)
        seen = [receive(ws) for _ in range(5)]  # start and four chunks, then the socket closes
    last_id = seen[-1]["id"]
    with open_socket(service, client) as ws:
        send(ws, type="resume", session_id=session_id, last_event_id=last_id)
        rest = until_final(ws)
    assert rest[0]["id"] != last_id and seqs(rest)[0] == seqs(seen)[-1] + 1
    assert seqs(seen + rest) == list(range(1, len(seen) + len(rest) + 1))  # none twice, none missing
    assert rest[-1]["type"] == "end" and rest[-1]["finish_reason"] == "stop"
    stored = history(client, session_id)["messages"][-1]
    assert stored["content"] == answer_of(seen + rest) and "stopped" not in stored


def test_a_repeated_client_message_id_replays_that_turn(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        send(ws, type="message", session_id=session_id, message="once", client_message_id="m-1")
        first = until_final(ws)
        send(ws, type="message", session_id=session_id, message="once", client_message_id="m-1")
        again = until_final(ws)
    assert [frame["id"] for frame in again] == [frame["id"] for frame in first]
    assert history(client, session_id)["total"] == 2


# -- errors: one frame each, and the socket stays open ------------------------------------------


@pytest.mark.parametrize(
    ("frame", "status", "code"),
    [
        ("not json", 422, "invalid_request"),
        ('{"type": "dance", "session_id": "x"}', 422, "invalid_request"),
        ('{"type": "message", "message": "hi"}', 422, "invalid_request"),
        ('{"type": "message", "session_id": "SID", "message": "   "}', 422, "empty_message"),
        ('{"type": "message", "session_id": "SID", "message": "hi", "role": "nobody"}', 400, "unknown_role"),
        (
            '{"type": "message", "session_id": "SID", "message": "hi", "client_message_id": "a b"}',
            422,
            "invalid_request",
        ),
        ('{"type": "message", "session_id": "SID", "message": "hi", "from_turn": "t-none"}', 404, "turn_not_found"),
        ('{"type": "message", "session_id": "nosuchsession", "message": "hi"}', 404, "session_not_found"),
        ('{"type": "resume", "session_id": "SID", "last_event_id": "garbage"}', 422, "invalid_request"),
        ('{"type": "stop", "session_id": "nosuchsession"}', 404, "session_not_found"),
    ],
)
def test_a_bad_frame_gets_one_error_frame_and_the_socket_stays_open(
    client: httpx.Client, service: Service, frame: str, status: int, code: str
) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        ws.send(frame.replace("SID", session_id))
        error = receive(ws)
        assert error["type"] == "error" and (error["status"], error["code"]) == (status, code), error
        assert error["content"] and set(error) <= {"type", "code", "content", "status", "session_id"}
        send(ws, type="message", session_id=session_id, message="still here?")
        assert until_final(ws)[-1]["type"] == "end"


def test_a_message_too_long_is_413_and_a_second_send_while_relaying_is_409(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(max_message_chars=100)
    with service.client() as client:
        session_id = start_session(client)
        with open_socket(service, client) as ws:
            send(ws, type="message", session_id=session_id, message="x" * 101)
            too_long = receive(ws)
            assert (too_long["status"], too_long["code"]) == (413, "message_too_long")
            send(ws, type="message", session_id=session_id, message=LONG)
            assert receive(ws)["type"] == "start"
            send(ws, type="message", session_id=start_session(client), message="meanwhile")
            frames = until_final(ws)
    busy = [frame for frame in frames if frame["type"] == "error" and frame.get("code") == "socket_busy"]
    assert len(busy) == 1 and busy[0]["status"] == 409
    assert frames[-1]["type"] == "end"


def test_another_users_session_is_404_for_sends_resumes_and_stops(client: httpx.Client, service: Service) -> None:
    session_id = start_session(client)
    with open_socket(service, client) as ws:
        send(ws, type="message", session_id=session_id, message="mine")
        event_id = until_final(ws)[0]["id"]
    with service.client() as stranger:
        start_session(stranger)  # an identity of its own
        with open_socket(service, stranger) as ws:
            for frame in (
                {"type": "message", "session_id": session_id, "message": "theirs?"},
                {"type": "resume", "session_id": session_id, "last_event_id": event_id},
                {"type": "stop", "session_id": session_id},
            ):
                send(ws, **frame)
                error = receive(ws)
                assert (error["type"], error["status"], error["code"]) == ("error", 404, "session_not_found")
    assert history(client, session_id)["total"] == 2


# -- identity and the cross-site rule -----------------------------------------------------------


def handshake_refusal(service: Service, **headers: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(service), additional_headers=headers, open_timeout=10):
        pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


def test_an_upgrade_from_another_sites_page_is_refused(client: httpx.Client, service: Service) -> None:
    start_session(client)
    cookie = cookie_header(client)
    for headers in (
        {"Origin": "http://127.0.0.2:8000"},
        {"Origin": "http://127.0.0.2:8000", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        status, body = handshake_refusal(service, Cookie=cookie, **headers)
        assert (status, body["code"]) == (403, "cross_site"), headers
    host = service.base_url.removeprefix("http://")
    with open_socket(service, client, Origin=f"http://{host}"):  # its own page
        pass


def test_a_listed_origin_and_an_api_key_may_open_a_socket(make_service: Callable[..., Service]) -> None:
    service = make_service(cors_origins=["http://127.0.0.2:9000"])
    with service.client() as client:
        session_id = start_session(client)
        with open_socket(service, client, Origin="http://127.0.0.2:9000") as ws:
            send(ws, type="message", session_id=session_id, message="from the front end")
            assert until_final(ws)[-1]["type"] == "end"
    key = create_api_key(service, "alice")
    with service.client(headers={"Authorization": f"Bearer {key}"}) as keyed:
        session_id = start_session(keyed)
        # No cookie is involved: a page cannot make the browser add this header.
        with open_socket(service, Authorization=f"Bearer {key}", Origin="http://127.0.0.2:8000") as ws:
            send(ws, type="message", session_id=session_id, message="from a script")
            assert until_final(ws)[-1]["type"] == "end"
        assert history(keyed, session_id)["total"] == 2
    status, body = handshake_refusal(service, Authorization="Bearer wrong-key")
    assert (status, body["code"]) == (401, "invalid_api_key")


def test_a_new_visitor_gets_its_cookie_on_the_handshake(service: Service) -> None:
    with connect(ws_url(service), open_timeout=10) as ws:
        assert ws.response is not None
        cookie = ws.response.headers.get("set-cookie", "")
    assert cookie.startswith(service.settings.cookie_name + "=") and "HttpOnly" in cookie
    name, _, value = cookie.partition(";")[0].partition("=")
    with service.client(cookies={name: value}) as client:
        session_id = start_session(client)
        with open_socket(service, client) as ws:
            assert ws.response is not None and "set-cookie" not in ws.response.headers  # kept, not replaced
            send(ws, type="message", session_id=session_id, message="hi")
            assert until_final(ws)[-1]["type"] == "end"


# -- bounds -------------------------------------------------------------------------------------


def test_a_frame_over_the_size_bound_closes_the_socket_with_1009(make_service: Callable[..., Service]) -> None:
    service = make_service(max_body_bytes=2_048)
    with service.client() as client:
        session_id = start_session(client)
        with open_socket(service, client) as ws:
            send(ws, type="message", session_id=session_id, message="x" * 4_000)
            with pytest.raises(ConnectionClosed) as closed:
                receive(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def raw_upgrade(service: Service, cookie: str) -> socket.socket:
    """A WebSocket opened by hand on a socket with a tiny receive buffer, so that the client
    can stop reading (the `websockets` client would keep reading into its own buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", int(service.base_url.rpartition(":")[2])))
    sock.sendall(
        b"GET /chat/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + f"Cookie: {cookie}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def client_frame(text: str) -> bytes:
    frame = Frame(Opcode.TEXT, text.encode())
    return frame.serialize(mask=True, extensions=[])


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_cut_off_and_its_turn_is_stored(make_service: Callable[..., Service]) -> None:
    service = make_service(send_timeout_seconds=1, max_answer_chars=10_000_000)
    with service.client() as client:
        session_id = start_session(client)
        sock = raw_upgrade(service, cookie_header(client))
        try:
            message = "[[chunks=10000]] [[chunk_chars=1000]] [[delay_ms=0]]"
            sock.sendall(client_frame(json.dumps({"type": "message", "session_id": session_id, "message": message})))
            time.sleep(3)  # read nothing for longer than SEND_TIMEOUT_SECONDS
            received = read_until_closed(sock)
        finally:
            sock.close()
        print(f"a socket that read nothing for 3 s then got {len(received)} bytes before the cut")
        # Only what the kernels had buffered (a few MB at most of the 10 MB answer): cut off.
        assert b'"type":"end"' not in received and len(received) < 8_000_000
        wait_for(lambda: history(client, session_id)["total"] == 2, timeout=30)  # the turn went on
        answer = history(client, session_id)["messages"][-1]
        assert len(answer["content"]) == 10_000_000 and "stopped" not in answer


def test_the_server_pings_an_idle_socket_and_closes_a_peer_that_never_answers(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(sse_ping_seconds=0.3, send_timeout_seconds=1)
    with service.client() as client:
        start_session(client)
        sock = raw_upgrade(service, cookie_header(client))
        started = time.monotonic()
        received = b""
        try:
            while piece := sock.recv(4_096):
                received += piece
        finally:
            sock.close()
    elapsed = time.monotonic() - started
    assert received[0] == 0x80 | Opcode.PING.value, received[:8]  # a ping, unmasked, from the server
    assert Opcode.CLOSE.value | 0x80 in received  # then, unanswered, a close (1011) and the end
    assert 1.0 <= elapsed < 5, elapsed


def test_a_server_shutting_down_closes_the_socket_and_stops_in_time(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    server = ThreadedServer(create_app(settings)).start()
    service = Service(server.base_url, settings)
    try:
        with service.client() as client:
            session_id = start_session(client)
        with open_socket(service, client) as ws:
            send(ws, type="message", session_id=session_id, message=LONG)
            assert receive(ws)["type"] == "start"
            started = time.monotonic()
            stopping = threading.Thread(target=server.stop)
            stopping.start()
            frames: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(receive(ws))
            stopping.join(timeout=30)
        assert not stopping.is_alive() and time.monotonic() - started < 15
    finally:
        server.stop()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # "service restart"
    assert all(frame["type"] in ("chunk", "error") for frame in frames), frames


def test_open_sockets_are_counted_in_the_metrics(client: httpx.Client, service: Service) -> None:
    start_session(client)

    def open_now() -> float:
        return scrape(client)[("chat_websockets_open", ())]

    before = open_now()
    with open_socket(service, client), open_socket(service, client):
        assert open_now() == before + 2
    wait_for(lambda: open_now() == before)


def test_a_user_may_hold_max_sockets_per_user_open(make_service: Callable[..., Service]) -> None:
    service = make_service(max_sockets_per_user=2)
    with service.client() as client, service.client() as other:
        start_session(client)
        start_session(other)
        with open_socket(service, client), open_socket(service, client) as second:
            status, body = handshake_refusal(service, Cookie=cookie_header(client))
            assert (status, body["code"]) == (429, "too_many_sockets")
            with open_socket(service, other):  # another user's count is their own
                pass
            second.close()
            open_sockets = service.app.state.services.open_sockets
            wait_for(lambda: sum(open_sockets.values()) == 1)
            with open_socket(service, client) as again:  # one closed: one may open
                again.send(json.dumps({"type": "stop", "session_id": "x"}))
                assert receive(again)["type"] == "error"
