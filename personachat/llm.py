"""The model client: one streamed chat completion from any OpenAI-compatible API.

It uses the OpenAI SDK for the request, authentication, retries before the first byte and
HTTP error mapping, with choices measured in the benchmark (bench/):
- the request goes through the SDK's own `post` (what its resources call, public for
  "undocumented endpoints") with the body already JSON (orjson), and comes back as the raw
  HTTP response: `chat.completions.create` first runs its typed transform over its forty
  parameters and serializes with the standard `json`, which was a fifth of the SDK's CPU
  per request (and, over typed `messages`, a quarter of the service's CPU under load);
- the stream is parsed with orjson: iterating the SDK's typed stream builds pydantic objects
  per chunk, about seven times this path's CPU; deltas that arrive in one network read are
  yielded together;
- HTTP goes through the SDK's aiohttp transport (C HTTP parser) instead of pure-Python h11,
  with no read timeout of its own: the budget below bounds every wait, and an aiohttp read
  timeout re-arms a timer on every packet.

UPSTREAM_TIMEOUT_SECONDS is one budget, not a per-attempt timeout: the SDK retries a request
whose headers did not come in time, which made a hung model take twice the timeout plus the
retry pause to be reported. The budget covers everything up to the first byte, the SDK's
retries included (so they only happen when they fit: after a refused or reset connection, a
429 or a 5xx), and starts again for each wait between reads. It is checked lazily (`_Budget`):
a read notes the time, and a timer that fires once per UPSTREAM_TIMEOUT_SECONDS looks at it,
instead of a timer moved on every read.

Several providers may be configured (`MODELS_FILE`, personachat.models): `Models` holds one
`ModelClient` per provider, each with its own shared HTTP client made in the app's lifespan.
Error messages name the provider (never its key). Token usage is asked for with
`stream_options: {"include_usage": true}` unless the provider is configured not to
(`stream_usage: false`), and read from the stream's last chunk when it comes.

Every failure leaves this module as an `UpstreamError` with a stable code:

    upstream_unreachable   connection refused or reset before an answer
    upstream_timeout       UPSTREAM_TIMEOUT_SECONDS passed before the first byte (the SDK's
                           retries included) or between two reads of the stream
    upstream_auth          401/403: the key is wrong or lacks access
    upstream_rate_limited  429 from the model's API
    model_not_found        404: no such model (or wrong base URL)
    upstream_bad_request   400: the API refused the request
    context_length_exceeded 400 with that code: the prompt is longer than the model takes
    upstream_error         5xx, or an error object inside the stream
    upstream_stream_cut    the stream ended before the model finished
    upstream_bad_response  the stream was not OpenAI-compatible JSON
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson

from personachat.errors import UpstreamError, UpstreamTimeout
from personachat.models import ModelEntry, ModelRegistry


def create_openai_client(*, api_key: str, base_url: str | None, timeout: float, max_retries: int) -> openai.AsyncOpenAI:
    """The shared AsyncOpenAI client. Its timeouts bound one attempt; `ModelClient.stream`
    holds the budget that bounds them all (see there)."""
    # No read timeout: `ModelClient.stream`'s budget bounds the wait for the headers and each
    # read; aiohttp would otherwise move a timer on every packet of the stream.
    limits = httpx2.Timeout(timeout, connect=min(timeout, 10.0), read=None)
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=limits,
        max_retries=max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=limits),
    )


@dataclass
class Completion:
    """What a finished stream reported, filled in as the stream is read."""

    finish_reason: str | None = None
    usage: dict[str, int] | None = None  # {"prompt_tokens", "completion_tokens"}, when reported


class ContextLengthExceeded(UpstreamError):
    """The provider says the prompt does not fit the model (a 400 `context_length_exceeded`)."""

    def __init__(self, provider: str) -> None:
        super().__init__("context_length_exceeded", f"The prompt is too long for the model ({_of(provider)}).")


class ModelClient:
    """One provider: its shared AsyncOpenAI client and how to talk to it."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        default_model: str,
        timeout: float,
        *,
        provider: str = "openai",
        stream_usage: bool = True,
    ) -> None:
        self._client = client
        self.default_model = default_model
        self._timeout = timeout
        self.provider = provider
        self.stream_usage = stream_usage

    async def stream(
        self,
        messages: list[dict[str, Any]],
        completion: Completion,
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives; set `completion.finish_reason` (and `usage`,
        when the provider reports it) at the end."""
        body: dict[str, Any] = {"model": model or self.default_model, "messages": messages, "stream": True}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        try:
            # The budget: UPSTREAM_TIMEOUT_SECONDS for everything before the first byte of the
            # answer (connecting, the SDK's retries and their pauses, the headers), then again
            # for each wait between reads. The SDK's own timeouts bound a single attempt only.
            async with asyncio.timeout(self._timeout) as deadline:
                response = await self._client.post(
                    "/chat/completions",
                    cast_to=httpx2.Response,
                    content=orjson.dumps(body),
                    options=_REQUEST_OPTIONS,
                    stream=True,
                )
                budget = _Budget(deadline, self._timeout)
                try:
                    buffer = b""
                    async for data in response.aiter_bytes():
                        lines = (buffer + data).split(b"\n")
                        buffer = lines.pop()
                        text = _parse_lines(lines, completion)
                        if text:
                            budget.paused = True  # the caller's time between tokens is not the model's
                            yield text
                        budget.restart()
                        # Read to the end of the body even after the finish reason, so that the
                        # connection goes back to the pool instead of being closed (and the usage
                        # chunk, which follows the finish reason, is read).
                finally:
                    budget.cancel()
                    await response.aclose()
                if completion.finish_reason is not None:
                    return
        except TimeoutError as exc:  # the budget ran out
            raise UpstreamTimeout(self._timeout) from exc
        except openai.APIStatusError as exc:
            raise _status_error(exc, self.provider) from exc
        except openai.APITimeoutError as exc:
            if _refused(exc):
                raise UpstreamError(
                    "upstream_unreachable", f"The model's API ({_of(self.provider)}) could not be reached."
                ) from exc
            raise UpstreamTimeout(self._timeout) from exc
        except openai.APIConnectionError as exc:
            raise UpstreamError(
                "upstream_unreachable", f"The model's API ({_of(self.provider)}) could not be reached."
            ) from exc
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout(self._timeout) from exc
        except httpx2.TransportError as exc:
            raise UpstreamError(
                "upstream_stream_cut", f"The model's stream ({_of(self.provider)}) was cut off."
            ) from exc
        raise UpstreamError(
            "upstream_stream_cut", f"The model's stream ({_of(self.provider)}) ended before the answer was complete."
        )


# What `chat.completions.create` sends besides the body: the API key as a bearer token.
_REQUEST_OPTIONS: Any = {"security": {"bearer_auth": True}}


class _Budget:
    """The wait between reads, bounded without moving a timer on every read: a read notes its
    time (`restart`), and one timer, due a timeout after the last noted time, looks at it when
    it fires: past the budget it expires `deadline` (the stream's `asyncio.timeout`), else it
    is set again for the new time. While the caller holds a chunk (`paused`) nothing counts."""

    def __init__(self, deadline: asyncio.Timeout, seconds: float) -> None:
        self._deadline = deadline
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self.paused = False
        self._since = self._loop.time()
        deadline.reschedule(None)
        self._timer = self._loop.call_at(self._since + seconds, self._check)

    def restart(self) -> None:
        self.paused = False
        self._since = self._loop.time()

    def cancel(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self.paused:
            self._since = now
        elif now >= self._since + self._seconds:
            self._deadline.reschedule(now)  # the stream's task gets TimeoutError, as from the budget
            return
        self._timer = self._loop.call_at(self._since + self._seconds, self._check)


class Models:
    """The registry of models and one `ModelClient` per provider."""

    def __init__(self, registry: ModelRegistry, clients: dict[str, ModelClient]) -> None:
        self.registry = registry
        self.clients = clients

    @classmethod
    def single(cls, client: ModelClient, context_window: int = 8192) -> Models:
        """One provider with the one model its client defaults to (tests, simple wiring)."""
        from personachat.models import Provider

        entry = ModelEntry(client.default_model, client.provider, client.default_model, context_window)
        registry = ModelRegistry([Provider(client.provider, None, None)], [entry], entry.id)
        return cls(registry, {client.provider: client})

    def stream(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        completion: Completion,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str]:
        """The answer of `entry`'s provider. `max_tokens`, a client's own bound on the answer,
        is capped at the model's `max_output_tokens` (which is sent when the client names none)."""
        limit = entry.max_output_tokens
        if max_tokens is not None:
            limit = max_tokens if limit is None else min(max_tokens, limit)
        return self.clients[entry.provider].stream(
            messages,
            completion,
            model=entry.upstream,
            temperature=temperature,
            max_tokens=limit,
        )


def _parse_lines(lines: list[bytes], completion: Completion) -> str:
    """The text of the `data:` lines of one read; sets the finish reason when it comes."""
    pieces = []
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` fields
        payload = line[5:].strip()
        if payload == b"[DONE]":
            completion.finish_reason = completion.finish_reason or "stop"
            break
        try:
            event = orjson.loads(payload)
            if "error" in event:
                error = event["error"]
                detail = error.get("message") if isinstance(error, dict) else str(error)
                raise UpstreamError("upstream_error", f"The model reported an error: {detail}")
            usage = event.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                completion.usage = {
                    "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": int(usage.get("completion_tokens") or 0),
                }
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    pieces.append(content)
                if choice.get("finish_reason"):
                    completion.finish_reason = choice["finish_reason"]
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise UpstreamError("upstream_bad_response", "The model's API sent a malformed stream.") from exc
    return "".join(pieces)


def _refused(exc: BaseException) -> bool:
    """Whether a connection was refused or reset somewhere down the exception's chain.

    The aiohttp transport reports a refused connection as a connect *timeout*; the original
    OSError, kept as the cause, tells the two apart.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _of(provider: str) -> str:
    return f"provider {provider!r}"


def _status_error(exc: openai.APIStatusError, provider: str) -> UpstreamError:
    status = exc.status_code
    where = _of(provider)
    if status in (401, 403):
        return UpstreamError("upstream_auth", f"The model's API ({where}) refused our credentials (check its key).")
    if status == 429:
        return UpstreamError(
            "upstream_rate_limited", f"The model's API ({where}) is rate limiting us; try again shortly."
        )
    if status == 404:
        return UpstreamError("model_not_found", f"The model was not found ({where}: check the model and base URL).")
    if status == 400 and _error_code(exc) == "context_length_exceeded":
        return ContextLengthExceeded(provider)
    if 400 <= status < 500:
        return UpstreamError("upstream_bad_request", f"The model's API ({where}) rejected the request (HTTP {status}).")
    return UpstreamError("upstream_error", f"The model's API ({where}) failed (HTTP {status}).")


def _error_code(exc: openai.APIStatusError) -> str | None:
    """The `code` of an OpenAI-style error body (`{"error": {"code": ...}}`), if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])
    return None
