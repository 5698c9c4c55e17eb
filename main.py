"""The FastAPI application: `create_app()` builds it, its lifespan owns every client.

Run it with `python start_server.py` (which also starts the embedded Redis when REDIS_URL
is unset), or `uvicorn main:create_app --factory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from config import Settings
from personachat import __version__
from personachat.demo_model import DemoModel, RunningDemoModel
from personachat.embedded_redis import EmbeddedRedis
from personachat.identity import IdentityResolver
from personachat.llm import ModelClient, Models, create_openai_client
from personachat.models import check_persona_models, load_models
from personachat.personas import PersonaResolver, load_catalog
from personachat.readers import TurnReaders
from personachat.store.api_keys import ApiKeyStore
from personachat.store.client import create_blocking_redis, create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace
from personachat.store.limits import IdentityLimits
from personachat.store.personas import PersonaStore
from personachat.store.turnlog import TurnLog
from personachat.store.usage import UsageStore
from personachat.titles import Titles
from personachat.turns import TurnService
from personachat.web.deps import Services
from personachat.web.errors import install_error_handlers
from personachat.web.middleware import ServiceMiddleware
from personachat.web.routes import BOUNDED_BY_THEIR_ROUTE, router
from personachat.web.routes.ops import PAGE_CSP, STATIC_DIR
from personachat.web.schemas import install_openapi

logger = logging.getLogger("personachat")

DEMO_DELAY_MS = 25  # the demo model's pace, so its answers visibly stream in


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are validated and the personas loaded here, so a bad
    setting or roles file stops start-up with a readable message."""
    settings = settings or Settings()
    personas = load_catalog(settings.roles_file, settings.default_role)
    registry = load_models(settings)
    pinned = {persona.key: persona.model for persona in personas}
    check_persona_models(registry, pinned, f"roles file {settings.roles_file}" if settings.roles_file else "personas")
    secret_key = settings.resolved_secret_key()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            redis_url: str | None = settings.redis_url
            if redis_url is None:
                embedded = EmbeddedRedis(settings.data_dir)
                await asyncio.to_thread(embedded.start)
                stack.callback(embedded.stop)
                redis_url = embedded.url
            # One shared HTTP client per provider, closed with the app.
            clients: dict[str, ModelClient] = {}
            for provider in registry.providers.values():
                base_url = provider.base_url
                api_key = provider.api_key.get_secret_value() if provider.api_key else "not-needed"
                if provider.demo:
                    demo = RunningDemoModel(DemoModel(delay_ms=DEMO_DELAY_MS, record=False, usage=True))
                    await demo.start()
                    stack.push_async_callback(demo.aclose)
                    api_key, base_url = "offline-demo", demo.base_url
                openai_client = create_openai_client(
                    api_key=api_key,
                    base_url=base_url,
                    timeout=settings.upstream_timeout_seconds,
                    max_retries=settings.upstream_max_retries,
                )
                stack.push_async_callback(openai_client.close)
                clients[provider.name] = ModelClient(
                    openai_client,
                    registry.default_model,
                    settings.upstream_timeout_seconds,
                    provider=provider.name,
                    stream_usage=provider.stream_usage,
                )
            models = Models(registry, clients)
            pool = settings.redis_max_connections
            redis = create_redis(redis_url, cluster=settings.redis_cluster, max_connections=pool)
            stack.push_async_callback(redis.aclose)
            # XREAD BLOCK holds a connection for up to BLOCK_MS: never on the command pool.
            blocking_redis = create_blocking_redis(redis_url, cluster=settings.redis_cluster, max_connections=4 * pool)
            stack.push_async_callback(blocking_redis.aclose)

            keys = KeySpace(settings.redis_prefix)
            store = HistoryStore(redis, keys, Limits.from_settings(settings))
            turn_log = TurnLog(redis, keys, settings.turn_stream_ttl_seconds, blocking_redis)
            own = PersonaStore(redis, keys, ttl_seconds=settings.history_ttl_seconds)
            resolver = PersonaResolver(personas, own, max_per_user=settings.max_personas_per_user)
            resolver.model_ids = frozenset(registry.ids)
            usage = UsageStore(redis, keys, ttl_seconds=settings.history_ttl_seconds)
            titles = Titles(store, models) if settings.auto_titles else None
            turns = TurnService(
                redis,
                store,
                turn_log,
                resolver,
                models,
                usage=usage,
                max_message_chars=settings.max_message_chars,
                turn_timeout=settings.turn_timeout_seconds,
                max_turn_events=settings.max_turn_events,
                max_answer_chars=settings.max_answer_chars,
                titles=titles,
            )
            api_keys = ApiKeyStore(redis, keys)
            identity = IdentityResolver(
                secret_key,
                api_keys,
                cookie_name=settings.cookie_name,
                allow_anonymous=settings.allow_anonymous,
                limits=IdentityLimits(redis, keys, anonymous_per_minute=settings.anon_identities_per_minute),
            )
            readers = TurnReaders(turns, store, turn_log)
            app.state.services = Services(settings, redis, store, turns, readers, api_keys, identity, resolver)
            app.state.services.models, app.state.services.usage = models, usage
            app.state.demo_model = settings.uses_demo_model
            turns.start_background()
            stack.enter_context(_on_exit_signal(turns.begin_shutdown))
            logger.info(
                "ready: models=%s redis=%s",
                "offline demo" if settings.uses_demo_model else ", ".join(registry.ids),
                "embedded" if settings.redis_url is None else "configured",
            )
            # What startup made (modules, the app, its clients, pydantic's schemas) lives as long
            # as the process: out of the collector's way, a full collection no longer walks it
            # (it took 50 ms, a pause every running stream felt: the benchmark's TTFT p99).
            gc.freeze()
            try:
                yield
            finally:
                await turns.shutdown()

    app = FastAPI(
        title="Persona chat",
        version=__version__,
        description="Chat with AI personas; session memory in Redis; answers stream as Server-Sent Events.",
        lifespan=lifespan,
        docs_url=None,  # served by routes.ops from static/vendor, under a CSP (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.cors_origins:
        # Inside ServiceMiddleware: the cross-site rule lets these origins through, then this
        # answers their preflights and adds the CORS headers. Other origins get none.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Content-Type", "Authorization", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        ServiceMiddleware,
        cookie_name=settings.cookie_name,
        cookie_max_age=settings.cookie_max_age_days * 86_400,
        allowed_hosts=settings.trusted_hosts,
        cors_origins=settings.cors_origins,
        html_csp=PAGE_CSP,
        max_body_bytes=settings.resolved_max_body_bytes,
        own_body_bounds=BOUNDED_BY_THEIR_ROUTE,
    )
    install_error_handlers(app)
    install_openapi(app, personas.keys, settings.max_message_chars, registry.ids)
    return app


EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _on_exit_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` in the event loop as soon as SIGTERM or SIGINT arrives.

    uvicorn runs the lifespan's shutdown only after every connection has closed, and an SSE
    stream stays open until its turn ends; so the app hears the signal itself, to refuse new
    turns (503 `server_shutdown`) and end the running ones while the server drains. The
    handler the server installed (uvicorn's `Server.handle_exit`, in every worker) is
    chained, not replaced: it still starts the server's graceful shutdown. Only the main
    thread receives signals; a server run in another thread (the tests') is told nothing,
    and its turns end in the lifespan's shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}

    def handle(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signum]
        if callable(chained):
            chained(signum, frame)

    # Only where a server owns the signal: with the default action, the process would not exit.
    chained = [sig for sig in EXIT_SIGNALS if callable(previous[sig])]
    for sig in chained:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig in chained:
            if signal.getsignal(sig) is handle:
                signal.signal(sig, previous[sig])
