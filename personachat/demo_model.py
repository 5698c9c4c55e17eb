"""The built-in offline demo model: a small OpenAI-compatible server.

With no model configured, the service talks to this server over real HTTP, so the same
client code path runs as with OpenAI. Its answers say plainly that they come from the
offline demo and show what it received (the persona's system prompt, how many history
messages), so a user can see memory and personas working without any API key.

The test suite and the benchmark use it as their fake upstream, and turn on directives
(`DemoModel(directives=True)`): in the last user message they steer it.

In the service's own offline demo they are off, and a visitor's text is just text: a
directive is a fault injector (`[[hang]]` holds a turn slot for an hour, a huge
`[[chunks=N]]` blocks the event loop and fills memory), not something to hand to every
visitor. Even when on, numbers are capped (MAX_CHUNKS, MAX_DELAY_MS).

    [[chunks=N]]        answer with N chunks of filler text
    [[chunk_chars=C]]   with [[chunks=N]]: each chunk C characters long (a large answer)
    [[delay_ms=D]]      wait D ms before each chunk (default: the server's setting)
    [[first_delay_ms=D]] send the headers, then wait D ms before the first chunk (a slow first token)
    [[status=CODE]]     answer the request with HTTP CODE and an OpenAI-style error body
    [[hang]]            send the headers, then nothing (the client's timeout must fire)
    [[hang_after=K]]    send K chunks, then nothing
    [[cut_after=K]]     send K chunks, then close the connection mid-stream
    [[error_after=K]]   send K chunks, then an `error` object inside the stream
    [[garbage]]         send a data line that is not JSON

Every request body is recorded in `DemoModel.requests` (and its Authorization header in
`DemoModel.keys`), so tests can assert the exact prompt that went upstream, and where.

Options for playing a provider: `usage=True` sends a usage chunk when the request asks for
it (`stream_options.include_usage`); `api_key="k"` refuses (401) requests without
`Authorization: Bearer k`; `max_prompt_chars=N` refuses (400 `context_length_exceeded`) a
prompt whose messages hold more than N characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DIRECTIVE = re.compile(r"\[\[(\w+)(?:=(\d{1,9}))?\]\]")
MAX_CHUNKS = 10_000  # the benchmark's largest answer is 200 chunks, the tests' 1,500
MAX_DELAY_MS = 60_000
MAX_CHUNK_CHARS = 4_096  # with MAX_CHUNKS: answers up to 40 MB, for the tests of slow readers


class DemoModel:
    """The demo model's behaviour and its record of requests; `app` is its ASGI app."""

    def __init__(
        self,
        *,
        delay_ms: float = 0.0,
        record: bool = True,
        directives: bool = False,
        model_name: str = "offline-demo",
        usage: bool = False,
        api_key: str | None = None,
        max_prompt_chars: int | None = None,
    ) -> None:
        self.delay_ms = delay_ms
        self.directives = directives
        self.record = record
        self.model_name = model_name
        self.usage = usage
        self.api_key = api_key
        self.max_prompt_chars = max_prompt_chars
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str] = []  # the Authorization header of each recorded request
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model"}]})

    async def _completions(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            messages = body["messages"]
            last_user = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
            return _error(400, "invalid_request_error", "expected a JSON body with messages and a user message")
        if self.record:
            self.requests.append(body)
            self.keys.append(request.headers.get("authorization", ""))
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "Incorrect API key provided.", "invalid_api_key")
        size = sum(len(str(m.get("content", ""))) for m in messages)
        if self.max_prompt_chars is not None and size > self.max_prompt_chars:
            return _error(
                400,
                "invalid_request_error",
                "This model's maximum context length is exceeded.",
                "context_length_exceeded",
            )
        directives = _directives(str(last_user)) if self.directives else {}
        if "status" in directives:
            code = directives["status"]
            return _error(code, "demo_error", f"demo fault: HTTP {code}")
        pieces = list(_answer_pieces(messages, str(last_user), directives))
        delay = directives.get("delay_ms", self.delay_ms) / 1000
        if not body.get("stream"):
            return JSONResponse(_completion(body.get("model", self.model_name), "".join(pieces)))
        options = body.get("stream_options")
        usage = None
        if self.usage and isinstance(options, dict) and options.get("include_usage"):
            usage = {"prompt_tokens": size // 4 + len(messages), "completion_tokens": len(pieces)}
        stream = self._stream(body.get("model", self.model_name), pieces, delay, directives, usage)
        return StreamingResponse(stream, media_type="text/event-stream")

    async def _stream(
        self,
        model: str,
        pieces: list[str],
        delay: float,
        directives: dict[str, int],
        usage: dict[str, int] | None = None,
    ) -> AsyncIterator[bytes]:
        created = int(time.time())
        head = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": created, "model": model}
        if "hang" in directives:
            await asyncio.sleep(3600)
        if directives.get("first_delay_ms"):
            await asyncio.sleep(directives["first_delay_ms"] / 1000)
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for index, piece in enumerate(pieces):
            if index == directives.get("hang_after", -1):
                await asyncio.sleep(3600)
            if index == directives.get("cut_after", -1):
                raise ConnectionResetError("demo fault: stream cut")
            if index == directives.get("error_after", -1):
                yield _sse({"error": {"message": "demo fault: error in stream", "type": "server_error"}})
                return
            if "garbage" in directives:
                yield b"data: {not json\n\n"
                return
            if delay:
                await asyncio.sleep(delay)
            yield _sse({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage is not None:  # as OpenAI sends it: a last chunk with no choices
            total = usage["prompt_tokens"] + usage["completion_tokens"]
            yield _sse({**head, "choices": [], "usage": {**usage, "total_tokens": total}})
        yield b"data: [DONE]\n\n"


def _answer_pieces(messages: list[dict[str, Any]], last_user: str, directives: dict[str, int]) -> Iterator[str]:
    if "chunks" in directives:
        width = directives.get("chunk_chars", 0)
        for index in range(directives["chunks"]):
            yield f"w{index} ".ljust(width, "x")
        return
    system = next((str(m["content"]) for m in messages if m.get("role") == "system"), "")
    persona = system.split(". ")[0].strip().rstrip(".") + "." if system else "(no system prompt)"
    earlier = sum(1 for m in messages if m.get("role") in ("user", "assistant")) - 1
    quoted = " ".join((DIRECTIVE.sub("", last_user) if directives else last_user).split())
    if len(quoted) > 200:
        quoted = quoted[:200] + "…"
    text = (
        "**Offline demo model.** No real model is configured, so this answer is made up locally.\n\n"
        f"- Persona: *{persona}*\n"
        f"- Earlier messages in this conversation: **{earlier}**\n"
        f"- You said: “{quoted}”\n\n"
        "Set `OPENAI_API_KEY` (and `OPENAI_BASE_URL`, `OPENAI_MODEL` for other providers) "
        "to talk to a real model."
    )
    # Word-sized pieces, so the answer streams in as a real one does.
    yield from re.findall(r"\S*\s*", text)


def _directives(text: str) -> dict[str, int]:
    found = {name: int(value) if value else 0 for name, value in DIRECTIVE.findall(text)}
    if "chunks" in found:
        found["chunks"] = min(found["chunks"], MAX_CHUNKS)
    if "chunk_chars" in found:
        found["chunk_chars"] = min(found["chunk_chars"], MAX_CHUNK_CHARS)
    for name in ("delay_ms", "first_delay_ms"):
        if name in found:
            found[name] = min(found[name], MAX_DELAY_MS)
    return found


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


def _error(status: int, kind: str, message: str, code: str | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that runs inside another server's event loop.

    `Server.serve()` normally takes over SIGINT/SIGTERM for itself; nested inside the main
    server that would swallow the signals meant for the service, so this one leaves them alone.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RunningDemoModel:
    """A demo model served on a free loopback port in the current event loop."""

    def __init__(self, model: DemoModel) -> None:
        self.model = model
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        config = uvicorn.Config(model.app, log_level="warning", access_log=False, lifespan="off")
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task  # re-raises the start-up failure
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()
