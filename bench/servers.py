"""The processes of a benchmark run: Redis, the fake model, the bare relay and the service, on free
loopback ports.

Each is a child process of the controller, started and stopped by it; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from bench.limits import raise_open_files
from personachat.embedded_redis import redis_server_binary

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=raise_open_files
        )


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited early:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in time:\n{log.read_text()[-3000:]}")


class Workdir:
    """A temporary folder for the run's logs and Redis files."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="chat-bench-"))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = workdir / "redis"
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir()
        binary = shutil.which("redis-server") or redis_server_binary()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", "--maxclients", "20000"]
        self.process = _start(args, self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=30)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start (INFO commandstats), without INFO itself."""
        with self.client() as client:
            stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
        calls.pop("info", None)
        return calls

    def stop(self) -> None:
        _stop(self.process)


class ModelServer:
    """The fake OpenAI-compatible model (`bench.model`) in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "model.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ModelServer:
        self.process = _start([sys.executable, "-m", "bench.model", "--port", str(self.port)], self.log)
        _wait_http(self.url + "/v1/models", self.process, self.log)
        return self

    def stop(self) -> None:
        _stop(self.process)


class Measurable:
    """A server process and its children, whose CPU time and memory the runner reads around the turns."""

    process: subprocess.Popen[bytes] | None

    def processes(self) -> list[psutil.Process]:
        assert self.process is not None
        main = psutil.Process(self.process.pid)
        return [main, *main.children(recursive=True)]

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the ones a profiler attaches to)."""
        assert self.process is not None
        return [self.process.pid]

    def cpu_seconds(self) -> float:
        """User + system time of every process, so far."""
        total = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total


class RelayServer(Measurable):
    """The bare byte relay (`bench.relay`) in front of the model, in its own process: the floor."""

    def __init__(self, workdir: Path, model: ModelServer, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"relay-{name}.log"
        self.model = model
        self.process = None

    def start(self) -> RelayServer:
        args = [sys.executable, "-m", "bench.relay", "--port", str(self.port), "--upstream", self.model.url]
        self.process = _start(args, self.log)
        _wait_http(self.url + "/v1/models", self.process, self.log)  # relayed to the model
        return self

    def stop(self) -> None:
        _stop(self.process)


class ServiceServer(Measurable):
    """The chat service, `start_server.py` with N workers, as a subprocess."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"service-{name}.log"
        self.data_dir = workdir / f"data-{name}"
        self.workers = workers
        self.env = {
            **os.environ,
            **env,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": str(workers),
            "DATA_DIR": str(self.data_dir),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceServer:
        self.process = _start([sys.executable, "start_server.py"], self.log, self.env)
        _wait_http(self.url + "/healthz", self.process, self.log)
        # With several workers, wait until each has started (each one's lifespan has run).
        deadline = time.monotonic() + 30
        while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5 if self.workers > 1 else 0)
        return self

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the main one alone, or uvicorn's workers."""
        processes = self.processes()
        if self.workers == 1:
            return [processes[0].pid]
        # uvicorn's multiprocess supervisor also starts a resource tracker; its workers run main.py.
        return [p.pid for p in processes[1:] if "multiprocessing.resource_tracker" not in " ".join(p.cmdline())]

    def stop(self) -> None:
        _stop(self.process, timeout=30)
