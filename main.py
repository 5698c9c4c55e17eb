"""The FastAPI application: `create_app()` builds it, its lifespan owns every client.

Run it with `python start_server.py` (which also starts the embedded Redis when REDIS_URL
is unset), or `uvicorn main:create_app --factory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import AppStatus

from config import Settings
from personachat import __version__
from personachat.demo_model import DemoModel, RunningDemoModel
from personachat.embedded_redis import EmbeddedRedis
from personachat.identity import IdentityResolver
from personachat.llm import ModelClient, create_openai_client
from personachat.personas import PersonaResolver, load_catalog
from personachat.readers import TurnReaders
from personachat.store.api_keys import ApiKeyStore
from personachat.store.client import create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace
from personachat.store.personas import PersonaStore
from personachat.store.turnlog import TurnLog
from personachat.turns import TurnService
from personachat.web.deps import Services
from personachat.web.errors import install_error_handlers
from personachat.web.middleware import ServiceMiddleware
from personachat.web.routes import router
from personachat.web.routes.ops import STATIC_DIR

logger = logging.getLogger("personachat")

DEMO_DELAY_MS = 25  # the demo model's pace, so its answers visibly stream in


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are validated and the personas loaded here, so a bad
    setting or roles file stops start-up with a readable message."""
    settings = settings or Settings()
    personas = load_catalog(settings.roles_file, settings.default_role)
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
            base_url: str | None
            if settings.uses_demo_model:
                demo = RunningDemoModel(DemoModel(delay_ms=DEMO_DELAY_MS, record=False))
                await demo.start()
                stack.push_async_callback(demo.aclose)
                api_key, base_url, model_name = "offline-demo", demo.base_url, "offline-demo"
            else:
                key = settings.openai_api_key
                api_key = key.get_secret_value() if key else "not-needed"
                base_url, model_name = settings.openai_base_url, settings.openai_model
            openai_client = create_openai_client(
                api_key=api_key,
                base_url=base_url,
                timeout=settings.upstream_timeout_seconds,
                max_retries=settings.upstream_max_retries,
            )
            stack.push_async_callback(openai_client.close)
            redis = create_redis(redis_url, cluster=settings.redis_cluster)
            stack.push_async_callback(redis.aclose)

            keys = KeySpace(settings.redis_prefix)
            store = HistoryStore(redis, keys, Limits.from_settings(settings))
            turn_log = TurnLog(redis, keys, settings.turn_stream_ttl_seconds)
            own = PersonaStore(redis, keys, ttl_seconds=settings.history_ttl_seconds)
            resolver = PersonaResolver(personas, own, max_per_user=settings.max_personas_per_user)
            turns = TurnService(
                redis,
                store,
                turn_log,
                resolver,
                ModelClient(openai_client, model_name, settings.upstream_timeout_seconds),
                max_message_chars=settings.max_message_chars,
                turn_timeout=settings.turn_timeout_seconds,
                max_turn_events=settings.max_turn_events,
            )
            api_keys = ApiKeyStore(redis, keys)
            identity = IdentityResolver(
                secret_key, api_keys, cookie_name=settings.cookie_name, allow_anonymous=settings.allow_anonymous
            )
            readers = TurnReaders(turns, store, turn_log)
            app.state.services = Services(settings, redis, store, turns, readers, api_keys, identity, resolver)
            app.state.demo_model = settings.uses_demo_model
            turns.start_background()
            watcher = asyncio.create_task(_end_turns_on_exit(turns))
            logger.info(
                "ready: model=%s redis=%s",
                "offline demo" if settings.uses_demo_model else model_name,
                "embedded" if settings.redis_url is None else "configured",
            )
            try:
                yield
            finally:
                watcher.cancel()
                await turns.shutdown()

    app = FastAPI(
        title="Persona chat",
        version=__version__,
        description="Chat with AI personas; session memory in Redis; answers stream as Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(
        ServiceMiddleware, cookie_name=settings.cookie_name, cookie_max_age=settings.cookie_max_age_days * 86_400
    )
    install_error_handlers(app)
    return app


async def _end_turns_on_exit(turns: TurnService) -> None:
    """On SIGTERM/SIGINT, end running turns with `server_shutdown` so streams can close.

    uvicorn waits for open connections before the lifespan's shutdown runs, and an SSE
    stream stays open until its turn ends; so the turns are ended as soon as the server
    is told to exit (sse-starlette's flag, or uvicorn's own when its signal handler is set).
    """
    while True:
        await asyncio.sleep(0.2)
        server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        if AppStatus.should_exit or getattr(server, "should_exit", False):
            await turns.shutdown()
            return
