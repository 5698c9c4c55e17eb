"""Prometheus metrics: their definitions, the few calls that update them, and `GET /metrics`.

Updates are cheap on purpose: the per-chunk path does nothing here but note the first
chunk of a turn; chunks are added up once per turn, when it ends.

`GET /metrics` answers only when METRICS_ENABLED (default true); with METRICS_TOKEN set it
wants `Authorization: Bearer <METRICS_TOKEN>`. With several worker processes, set
PROMETHEUS_MULTIPROC_DIR to an empty folder (start_server.py does it for `--workers N`
> 1): each worker writes its values there and any worker's /metrics answers for all
(prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from personachat.errors import ChatError, NotAuthenticated
from personachat.web.schemas import ErrorResponse

# Seconds; from a fast local model's first token to a long answer.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
_DURATION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 600)

REQUESTS = Counter(
    "chat_http_requests", "HTTP requests answered, by method, route template and status.", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "chat_http_request_duration_seconds",
    "Time to answer an HTTP request (for a stream: until it closes), by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAMS_OPEN = Gauge("chat_streams_open", "Server-Sent Event streams open now.", multiprocess_mode="livesum")
SOCKETS_OPEN = Gauge("chat_websockets_open", "WebSockets (GET /chat/ws) open now.", multiprocess_mode="livesum")
TURNS_STARTED = Counter("chat_turns_started", "Turns admitted and started.")
TURNS_RUNNING = Gauge("chat_turns_running", "Turns running now.", multiprocess_mode="livesum")
TURNS_COMPLETED = Counter(
    "chat_turns_completed",
    "Turns that ended with `end`, by finish reason (stop, length, stopped...).",
    ["finish_reason"],
)
TURNS_FAILED = Counter("chat_turns_failed", "Turns that ended with an `error` event, by error code.", ["code"])
FIRST_CHUNK_SECONDS = Histogram(
    "chat_time_to_first_chunk_seconds", "From a turn's start to the model's first chunk.", buckets=_LATENCY_BUCKETS
)
TURN_SECONDS = Histogram(
    "chat_turn_duration_seconds", "From a turn's start to its final event.", buckets=_DURATION_BUCKETS
)
CHUNKS = Counter(
    "chat_chunks_relayed", "Answer chunks (tokens, roughly) relayed from the model; added when a turn ends."
)
UPSTREAM_ERRORS = Counter("chat_upstream_errors", "Turns failed by the model's API, by error code.", ["code"])
REDIS_ERRORS = Counter("chat_redis_errors", "Store operations that failed because Redis was unreachable.")
# Only models listed in MODELS_FILE are labels: their number is bounded by the operator.
TOKENS = Counter(
    "chat_tokens",
    "Tokens used, as the providers report them, by model and kind (prompt, completion).",
    ["model", "kind"],
)

_UPSTREAM_CODES = ("upstream_", "model_not_found", "turn_timeout")


def turn_started() -> None:
    TURNS_STARTED.inc()
    TURNS_RUNNING.inc()


def tokens_used(model: str, prompt_tokens: int, completion_tokens: int) -> None:
    TOKENS.labels(model, "prompt").inc(prompt_tokens)
    TOKENS.labels(model, "completion").inc(completion_tokens)


def first_chunk(seconds: float) -> None:
    FIRST_CHUNK_SECONDS.observe(seconds)


def turn_ended(final: bytes, seconds: float, chunks: int) -> dict[str, Any]:
    """Record a finished turn from its final event; returns its outcome, for the log line."""
    TURNS_RUNNING.dec()
    TURN_SECONDS.observe(seconds)
    CHUNKS.inc(chunks)
    event = orjson.loads(final)
    outcome: dict[str, Any] = {"seconds": round(seconds, 3), "chunks": chunks}
    if event.get("type") == "end":
        TURNS_COMPLETED.labels(event.get("finish_reason", "")).inc()
        outcome["outcome"] = event.get("finish_reason", "")
    else:
        code = str(event.get("code", "internal_error"))
        TURNS_FAILED.labels(code).inc()
        if code.startswith(_UPSTREAM_CODES):
            UPSTREAM_ERRORS.labels(code).inc()
        outcome.update(outcome="error", code=code)
    return outcome


def request_finished(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(seconds)


def exposition() -> bytes:
    """Every metric in the Prometheus text format (all workers' in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class MetricsDisabled(ChatError):
    status_code = 404
    code = "not_found"
    message = "Metrics are turned off (METRICS_ENABLED=false)."


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        401: {"model": ErrorResponse, "description": "METRICS_TOKEN is set and was not sent."},
        404: {"model": ErrorResponse, "description": "METRICS_ENABLED=false."},
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, turns, streams, latencies, errors.

    404 when METRICS_ENABLED=false; with METRICS_TOKEN set, send `Authorization: Bearer <token>`.
    """
    settings = request.app.state.settings
    if not settings.metrics_enabled:
        raise MetricsDisabled()
    if settings.metrics_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = settings.metrics_token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise NotAuthenticated("Send the metrics token as 'Authorization: Bearer <METRICS_TOKEN>'.")
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
