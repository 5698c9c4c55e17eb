"""A real TCP proxy between the service and Redis that can lose a reply on purpose.

`FaultProxy` listens on a free loopback port and forwards every connection to a Redis. Told
to `drop_reply(pattern)`, it forwards the next command whose bytes contain `pattern` (a Lua
script's SHA, say) to Redis, waits for Redis's reply, throws the reply away and closes the
connection: the command ran, and the client sees only a dropped connection, exactly what a
network failure between the two looks like. The client's retry then sends it again; with
`outage=`, new connections are refused for that long after the drop, so the retries fail
too and the writer believes that a write which was applied failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time

from tests.servers import free_port


def script_sha(script: str) -> bytes:
    """The SHA1 that EVALSHA names a Lua script by (redis-py's register_script sends it)."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._target = target_port
        self._rules: list[list[object]] = []  # [pattern, drops left, outage after each]
        self._refuse_until = 0.0
        self._lock = threading.Lock()
        self.dropped = 0  # replies thrown away so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def drop_reply(self, pattern: bytes, times: int = 1, outage: float = 0.0) -> None:
        """Lose Redis's reply to the next `times` commands containing `pattern`, each time
        refusing new connections for `outage` seconds after."""
        with self._lock:
            self._rules.append([pattern, times, outage])

    def _take(self, data: bytes) -> float | None:
        """The outage to start after this command's reply, or None to let it through."""
        with self._lock:
            for rule in self._rules:
                pattern, left, outage = rule
                assert isinstance(pattern, bytes) and isinstance(left, int) and isinstance(outage, float)
                if left > 0 and pattern in data:
                    rule[1] = left - 1
                    return outage
        return None

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if time.monotonic() < self._refuse_until:  # Redis "unreachable" for a moment
            client_writer.close()
            return
        self._connections.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            client_writer.close()
            self._connections.discard(task)
            return
        doomed = asyncio.Event()
        outage = 0.0

        async def upstream() -> None:
            nonlocal outage
            tail = b""
            while data := await client_reader.read(65536):
                window = tail + data
                tail = window[-512:]  # a pattern split over two reads is still seen
                taken = self._take(window)
                if taken is not None:
                    outage = taken
                    doomed.set()
                server_writer.write(data)
                await server_writer.drain()
                if doomed.is_set():
                    return  # nothing more goes through this connection

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if doomed.is_set():
                    self.dropped += 1  # the command ran; its reply is lost
                    self._refuse_until = time.monotonic() + outage
                    return
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if doomed.is_set():
                await asyncio.wait(pumps, timeout=5)  # until the reply came (and was dropped)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
            self._connections.discard(task)
