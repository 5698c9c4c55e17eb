"""The load generator, a process of its own: C simulated users, each with K turns.

    python -m bench.loadgen '<json config>'

Each user has its own cookie jar and connection. Against the service a user starts a
session (POST /chat/start), then sends K messages with POST /chat/stream and reads each
stream to its `end` event; against the model directly (the baseline) it sends the same
messages to POST /v1/chat/completions with stream=true and reads to `[DONE]` (the bare relay,
bench.relay, is driven the same way: it speaks the model's protocol). Every answer is checked
word for word against what the fake model was told to send.

Throughput counts the model's chunks as found in the answer text (the fake model's chunk i is
`wi `), not SSE events: a relay that coalesces several chunks into one event delivers the same
chunks, neither more nor fewer.

It talks to the controller (bench.runner) in JSON lines on stdout, and waits for its go-ahead
on stdin, so the controller can read the service's CPU and Redis counters exactly around
the turns (not the session set-up, nor the verification after):

    -> {"phase": "ready"}                 sessions started; waits for "go"
    -> {"phase": "open"}                  (when asked) every first turn has its stream open
    -> {"phase": "measured", ...}         the turns' numbers; waits for "verify"
    -> {"phase": "verified", ...}         a sample of histories read back through the API
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.limits import raise_open_files

HISTORY_SAMPLE = 20
MODEL_CHUNK = re.compile(r"w\d+ ")  # one piece of the fake model's `[[chunks=N]]` answer


@dataclass
class Config:
    target: str  # "service" or "direct"
    base_url: str
    users: int
    turns: int
    message: str  # the directives for the fake model
    expected_chunks: int
    ramp_seconds: float = 1.0
    turn_timeout: float = 60.0
    deadline_seconds: float = 300.0
    report_open: bool = False
    seed: int = 1
    transport: str = "sse"  # the service's: "sse" (POST /chat/stream) or "ws" (one GET /chat/ws per user)


@dataclass
class Results:
    ttft_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    pings: list[int] = field(default_factory=list)  # keep-alive comments seen before the first chunk, per turn
    turns_ok: int = 0
    chunks: int = 0  # the model's chunks found in the answers (several may come in one event)
    events: int = 0  # SSE events carrying them
    errors: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    settled: int = 0
    first_start: float = 0.0
    last_end: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class TurnFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class User:
    def __init__(self, config: Config, number: int, results: Results, all_open: asyncio.Event) -> None:
        self.config = config
        self.number = number
        self.results = results
        self.all_open = all_open
        self.http = aiohttp.ClientSession(
            base_url=config.base_url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # loopback IP: cookies are kept anyway
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=config.turn_timeout),
        )
        self.session_id = ""
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.opened = False
        self.expected = "".join(f"w{index} " for index in range(config.expected_chunks))

    async def start(self) -> None:
        if self.config.target == "service":
            async with self.http.post("/chat/start", json={"title": f"bench {self.number}"}) as response:
                if response.status != 200:
                    raise TurnFailed(f"start_http_{response.status}")
                self.session_id = (await response.json())["session_id"]
            if self.config.transport == "ws":  # one socket for all the user's turns, with the cookie
                self.socket = await self.http.ws_connect("/chat/ws", heartbeat=None, max_msg_size=0)

    async def run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        for turn in range(self.config.turns):
            message = f"turn {turn} of user {self.number} {self.config.message}"
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self.config.turn_timeout):
                    if self.socket is not None:
                        text, first = await self._socket_turn(message, first_turn=turn == 0)
                    elif self.config.target == "service":
                        text, first = await self._service_turn(message, began, turn == 0)
                    else:
                        text, first = await self._direct_turn(message, began, turn == 0)
            except TurnFailed as exc:
                self._failed(exc.kind, turn == 0)
                continue
            except TimeoutError:
                self._failed("timeout", turn == 0)
                continue
            except aiohttp.ClientError as exc:
                self._failed(f"client_{type(exc).__name__}", turn == 0)
                continue
            ended = time.perf_counter()
            if text != self.expected:
                self.results.error("wrong_answer")
                continue
            self.results.turns_ok += 1
            self.results.ttft_ms.append((first - began) * 1000)
            self.results.turn_ms.append((ended - began) * 1000)
            self.results.last_end = max(self.results.last_end, ended)

    def _opened(self, first_turn: bool) -> None:
        if first_turn:
            self.results.opened += 1
            self._settled()

    def _failed(self, kind: str, first_turn: bool) -> None:
        self.results.error(kind)
        if first_turn and not self.opened:
            self._settled()

    def _settled(self) -> None:
        """Every user's first stream is open, or has failed before opening."""
        self.opened = True
        self.results.settled += 1
        if self.results.settled == self.config.users:
            self.all_open.set()

    async def _service_turn(self, message: str, began: float, first_turn: bool) -> tuple[str, float]:
        body = {"session_id": self.session_id, "message": message}
        pieces: list[str] = []
        first = 0.0
        pings = 0
        async with self.http.post("/chat/stream", json=body) as response:
            if response.status != 200:
                raise TurnFailed(f"http_{response.status}")
            buffer = b""
            async for data in response.content.iter_any():
                *frames, buffer = (buffer + data).split(b"\r\n\r\n")
                for frame in frames:
                    if frame.startswith(b":"):
                        pings += 0 if pieces else 1
                        continue
                    event = orjson.loads(frame[frame.index(b"data: ") + 6 :])
                    first = self._took(event, pieces, first, first_turn)
                    if event["type"] == "end":
                        self.results.pings.append(pings)
                        return await self._received(response, pieces, first)
        raise TurnFailed("no_end")

    async def _socket_turn(self, message: str, first_turn: bool) -> tuple[str, float]:
        assert self.socket is not None
        frame = {"type": "message", "session_id": self.session_id, "message": message}
        await self.socket.send_str(orjson.dumps(frame).decode())
        pieces: list[str] = []
        first = 0.0
        async for received in self.socket:
            if received.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            event = orjson.loads(received.data)
            first = self._took(event, pieces, first, first_turn)
            if event["type"] == "end":
                return self._answer(pieces), first
        raise TurnFailed("socket_closed")

    def _took(self, event: dict[str, Any], pieces: list[str], first: float, first_turn: bool) -> float:
        """One event of a service turn (stream or socket): a chunk joins `pieces`, an error fails
        the turn. Returns when the first chunk came (0 until it has)."""
        kind = event["type"]
        if kind == "chunk":
            if not pieces:
                first = time.perf_counter()
            pieces.append(event["content"])
            self.results.events += 1
        elif kind == "start":
            self._opened(first_turn)
        elif kind != "end":
            raise TurnFailed(f"event_{event.get('code', kind)}")
        return first

    async def _direct_turn(self, message: str, began: float, first_turn: bool) -> tuple[str, float]:
        body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": message}]}
        pieces: list[str] = []
        first = 0.0
        async with self.http.post("/v1/chat/completions", json=body) as response:
            if response.status != 200:
                raise TurnFailed(f"http_{response.status}")
            self._opened(first_turn)
            buffer = b""
            async for data in response.content.iter_any():
                *frames, buffer = (buffer + data).split(b"\n\n")
                for frame in frames:
                    payload = frame[6:]
                    if payload == b"[DONE]":
                        return await self._received(response, pieces, first)
                    for choice in orjson.loads(payload)["choices"]:
                        content = choice["delta"].get("content")
                        if content:
                            if not pieces:
                                first = time.perf_counter()
                            pieces.append(content)
                            self.results.events += 1
        raise TurnFailed("no_end")

    async def _received(self, response: aiohttp.ClientResponse, pieces: list[str], first: float) -> tuple[str, float]:
        """The answer is complete: read the response to its end, as a browser or the OpenAI SDK does,
        so the connection is kept alive for the next turn (leaving earlier would close it)."""
        await response.content.read()
        return self._answer(pieces), first

    def _answer(self, pieces: list[str]) -> str:
        """The answer's text; its model chunks are counted as found in it."""
        text = "".join(pieces)
        self.results.chunks += len(MODEL_CHUNK.findall(text))
        return text

    async def check_history(self) -> bool:
        async with self.http.get("/chat/history", params={"session_id": self.session_id}) as response:
            if response.status != 200:
                return False
            messages = (await response.json())["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        return len(messages) == 2 * self.config.turns and all(answer == self.expected for answer in answers)

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        await self.http.close()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def read_command() -> str:
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


async def main(config: Config) -> None:
    results = Results()
    all_open = asyncio.Event()
    users = [User(config, number, results, all_open) for number in range(config.users)]
    gate = asyncio.Semaphore(64)

    async def start(user: User) -> None:
        async with gate:
            await user.start()

    try:
        await asyncio.gather(*(start(user) for user in users))
        emit({"phase": "ready"})
        if await read_command() != "go":
            return
        rng = random.Random(config.seed)
        delays = [rng.uniform(0, config.ramp_seconds) for _ in users]
        results.first_start = time.perf_counter()
        tasks = [asyncio.create_task(user.run(delay)) for user, delay in zip(users, delays, strict=True)]
        if config.report_open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(config.deadline_seconds):
                    await all_open.wait()
            emit({"phase": "open", "opened": results.opened})
        done, pending = await asyncio.wait(tasks, timeout=config.deadline_seconds)
        for task in pending:
            task.cancel()
        if pending:
            results.error("deadline")
        for task in done:
            if task.exception() is not None:
                results.error(f"crash_{type(task.exception()).__name__}")
        emit(
            {
                "phase": "measured",
                "seconds": max(results.last_end - results.first_start, 1e-9),
                "turns_ok": results.turns_ok,
                "turns_planned": config.users * config.turns,
                "chunks": results.chunks,
                "events": results.events,
                "errors": results.errors,
                "ttft_ms": results.ttft_ms,
                "turn_ms": results.turn_ms,
                "pings": results.pings,
            }
        )
        if await read_command() != "verify":
            return
        checked = ok = 0
        if config.target == "service":
            for user in users[:: max(1, len(users) // HISTORY_SAMPLE)][:HISTORY_SAMPLE]:
                checked += 1
                ok += await user.check_history()
        emit({"phase": "verified", "histories_checked": checked, "histories_ok": ok})
    finally:
        await asyncio.gather(*(user.close() for user in users), return_exceptions=True)


def run() -> None:
    raise_open_files()
    config = Config(**orjson.loads(sys.argv[1]))
    try:
        import uvloop

        uvloop.run(main(config))
    except ImportError:
        asyncio.run(main(config))


if __name__ == "__main__":
    run()
