"""Running a turn: admission, the model call, its events, stop, and the final commit.

A turn is one user message and the model's answer. Once admitted it runs as a task of its
own, independent of the HTTP request that started it: a client that disconnects does not
stop it, and the answer is stored when it ends. Its events (`start`, `chunk`..., then `end`
or `error`) are kept in memory for readers in this process and written in batches to the
turn's Redis stream (`turnlog`), from which readers in other processes, and clients
resuming with `Last-Event-ID`, are served (`readers`).

Guarantees:
- event ids are `<turn id>:<seq>`; a reader never sees an event twice or out of order;
- the answer is committed with the `end` event in one transaction, so `end` means stored;
- a failed turn stores nothing in history (the client keeps the message and may retry);
  a stopped turn stores the partial answer with `"stopped": true`;
- every turn ends: model errors and timeouts, the turn deadline, a stop request (from any
  instance, through Redis) and server shutdown each end it with one final event, and its
  session lock is released in the same transaction (or expires, if the process died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from personachat import metrics
from personachat.errors import (
    ChatError,
    EmptyMessage,
    MessageTooLong,
    StoreUnavailable,
    UpstreamError,
)
from personachat.llm import Completion, ModelClient
from personachat.personas import Persona, PersonaResolver
from personachat.store.client import UNREACHABLE, Redis
from personachat.store.history import HistoryStore, SessionInfo, now_iso
from personachat.store.turnlog import TurnLog, raise_unless_already_written

logger = logging.getLogger(__name__)

# Seconds between batched writes of a running turn's events to Redis. Readers in the turn's
# own process are served from memory at once; this only delays readers on other instances.
FLUSH_INTERVAL = 0.25
STOP_POLL_INTERVAL = 0.25  # how often this process looks for stop requests of its turns
COMMIT_ATTEMPTS = 4  # a turn's final commit rides over a short Redis outage


@dataclass
class TurnRequest:
    user: str
    session_id: str
    message: str
    role: str | None = None


@dataclass
class TurnRun:
    """A turn running in this process: its events so far, and who waits for more."""

    turn_id: str
    user: str
    session_id: str
    persona: Persona
    payloads: list[bytes] = field(default_factory=list)  # payloads[i] is event seq i + 1
    flushed: int = 0  # events written to Redis so far
    finished: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Pulsed (set, then cleared) on every change. Each waiter has a future of its own, so a
    # reader cancelled by its client's disconnect cannot cancel the others' wait.
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def event_id(self, seq: int) -> bytes:
        return f"{self.turn_id}:{seq}".encode()

    def append(self, payload: dict[str, Any]) -> None:
        self.payloads.append(orjson.dumps(payload))
        self._wake()

    def finish(self) -> None:
        self.finished = True
        self._wake()
        self.done.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()

    async def changed(self) -> None:
        await self._changed.wait()


class TurnService:
    def __init__(
        self,
        redis: Redis,
        store: HistoryStore,
        log: TurnLog,
        personas: PersonaResolver,
        model: ModelClient,
        *,
        max_message_chars: int,
        turn_timeout: float,
        max_turn_events: int,
    ) -> None:
        self._redis = redis
        self._store = store
        self._log = log
        self._personas = personas
        self._model = model
        self._max_message_chars = max_message_chars
        self._deadline = max(turn_timeout * 0.9, turn_timeout - 5)
        self._max_events = max_turn_events
        self._runs: dict[str, TurnRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.closing = False

    # -- starting, stopping and reading turns -------------------------------------------

    async def start(self, request: TurnRequest) -> TurnRun:
        """Admit and start a turn; raises the HTTP errors known before streaming starts."""
        message = request.message.strip()
        if not message:
            raise EmptyMessage()
        if len(message) > self._max_message_chars:
            raise MessageTooLong(self._max_message_chars)
        chosen = await self._personas.resolve(request.user, request.role) if request.role is not None else None
        admission = await self._store.admit_turn(request.user, request.session_id)
        # A session whose persona was deleted (or left the roles file) goes on with the default.
        persona = chosen or await self._personas.for_session(request.user, admission.session_role)
        run = TurnRun(admission.turn_id, request.user, request.session_id, persona)
        run.append({"type": "start", "session_id": run.session_id, "turn_id": run.turn_id, "role": persona.key})
        try:
            await self._log.create(run.user, run.session_id, run.turn_id, run.payloads[0])
            run.flushed = 1
        except StoreUnavailable:
            with contextlib.suppress(*UNREACHABLE):
                await self._release(run)
            raise
        user_message = {"role": "user", "content": message, "timestamp": now_iso(), "turn_id": run.turn_id}
        prompt = [{"role": "system", "content": persona.system_prompt}, *admission.window]
        prompt.append({"role": "user", "content": message})
        self._runs[run.turn_id] = run
        task = asyncio.create_task(self._run(run, prompt, user_message), name=f"turn-{run.turn_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("turn started", extra={"turn_id": run.turn_id, "session_id": run.session_id, "role": persona.key})
        return run

    async def stop(self, user: str, session_id: str) -> SessionInfo:
        """Ask the session's running turn, wherever it runs, to stop; wait briefly for it."""
        session = await self._store.get_session(user, session_id)
        turn_id = session.running_turn_id
        if turn_id is None:
            return session
        await self._log.request_stop(user, turn_id)
        run = self._runs.get(turn_id)
        if run is not None:
            run.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), timeout=5)
        else:
            for _ in range(30):  # the owning instance notices within STOP_POLL_INTERVAL
                await asyncio.sleep(0.1)
                if (await self._store.get_session(user, session_id)).running_turn_id != turn_id:
                    break
        return session

    # -- the turn itself ------------------------------------------------------------------

    async def _run(self, run: TurnRun, prompt: list[dict[str, Any]], user_message: dict[str, Any]) -> None:
        answer: list[str] = []
        completion = Completion()
        consume = asyncio.create_task(self._consume(run, prompt, answer, completion))
        stop = asyncio.create_task(run.stop.wait())
        started = time.monotonic()
        metrics.turn_started()
        try:
            done, _ = await asyncio.wait({consume, stop}, timeout=self._deadline, return_when=asyncio.FIRST_COMPLETED)
            if consume in done and consume.exception() is None:
                await self._commit(run, user_message, "".join(answer), completion.finish_reason or "stop")
            elif consume in done:
                await self._fail(run, _as_chat_error(consume.exception()))
            elif stop in done:
                await _cancel(consume)
                await self._commit(run, user_message, "".join(answer), "stopped")
            else:
                await _cancel(consume)
                await self._fail(run, UpstreamError("turn_timeout", "The answer took too long and was cut off."))
        except asyncio.CancelledError:
            await _cancel(consume)
            await asyncio.shield(self._fail(run, ServerShutdown()))
            raise
        except Exception:
            # A bug, not a model or Redis failure: log it, and still end every reader's stream.
            logger.exception("turn crashed", extra={"turn_id": run.turn_id})
            run.append(error_payload(ChatError()))
        finally:
            stop.cancel()
            self._runs.pop(run.turn_id, None)
            run.finish()
            outcome = metrics.turn_ended(run.payloads[-1], time.monotonic() - started, len(answer))
            logger.info(
                "turn ended",
                extra={"turn_id": run.turn_id, "session_id": run.session_id, "events": len(run.payloads), **outcome},
            )

    async def _consume(
        self, run: TurnRun, prompt: list[dict[str, Any]], answer: list[str], completion: Completion
    ) -> None:
        persona = run.persona
        flusher: asyncio.Task[None] | None = None
        started = time.monotonic()
        try:
            async for text in self._model.stream(
                prompt, completion, model=persona.model, temperature=persona.temperature
            ):
                answer.append(text)
                if flusher is None:  # the first chunk
                    metrics.first_chunk(time.monotonic() - started)
                run.append({"type": "chunk", "content": text})
                if len(run.payloads) >= self._max_events - 1:  # keep room for the final event
                    completion.finish_reason = "length"
                    return
                if flusher is None or flusher.done():
                    flusher = asyncio.create_task(self._flush_later(run))
        finally:
            if flusher is not None:
                await _cancel(flusher)

    async def _flush_later(self, run: TurnRun) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        # Shielded: once started, a write is not abandoned halfway (its ids must stay in order).
        with contextlib.suppress(StoreUnavailable):
            await asyncio.shield(self._flush(run))

    async def _flush(self, run: TurnRun) -> None:
        async with run.writing:
            count = len(run.payloads)
            if count > run.flushed:
                await self._log.append(
                    run.user, run.session_id, run.turn_id, run.flushed + 1, run.payloads[run.flushed : count]
                )
                run.flushed = count

    async def _commit(self, run: TurnRun, user_message: dict[str, Any], text: str, finish_reason: str) -> None:
        """Store the turn's messages, its remaining events and `end` in one transaction."""
        answer: dict[str, Any] = {"role": "assistant", "content": text, "timestamp": now_iso(), "turn_id": run.turn_id}
        answer["persona"] = run.persona.key
        if finish_reason == "stopped":
            answer["stopped"] = True
        end = {"type": "end", "session_id": run.session_id, "turn_id": run.turn_id, "finish_reason": finish_reason}
        try:
            await self._final_write(run, end, [user_message, answer], user_message["content"])
        except StoreUnavailable as exc:
            run.append(error_payload(exc))
            return
        run.append(end)

    async def _fail(self, run: TurnRun, error: ChatError) -> None:
        """End the turn with an `error` event; nothing is added to history."""
        payload = error_payload(error)
        logger.warning("turn failed", extra={"turn_id": run.turn_id, "code": error.code})
        with contextlib.suppress(StoreUnavailable):
            await self._final_write(run, payload, [], "")
        run.append(payload)

    async def _final_write(
        self, run: TurnRun, final: dict[str, Any], messages: list[dict[str, Any]], title: str
    ) -> None:
        async with run.writing:  # after any batch still being written, so ids stay in order
            await self._final_write_locked(run, final, messages, title)

    async def _final_write_locked(
        self, run: TurnRun, final: dict[str, Any], messages: list[dict[str, Any]], title: str
    ) -> None:
        payloads = [*run.payloads[run.flushed :], orjson.dumps(final)]
        last_seq = run.flushed + len(payloads)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    self._log.queue_append(pipe, run.user, run.session_id, run.turn_id, run.flushed + 1, payloads)
                    if messages:
                        self._store.queue_append_turn(pipe, run.user, run.session_id, messages, run.persona.key, title)
                    self._store.queue_release_turn(pipe, run.user, run.session_id, run.turn_id)
                    replies = await pipe.execute(raise_on_error=False)
                raise_unless_already_written(replies)
                return
            except UNREACHABLE as exc:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise StoreUnavailable("The answer could not be stored: Redis is unreachable.") from exc
                await asyncio.sleep(0.25 * 2**attempt)
            # The transaction may have been applied with its reply lost: a stored final
            # event says so, and writing it again would append the messages twice.
            with contextlib.suppress(StoreUnavailable):
                tail = await self._log.tail(run.user, run.session_id, run.turn_id)
                if tail is not None and tail.last_seq >= last_seq:
                    return

    async def _release(self, run: TurnRun) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self._store.queue_release_turn(pipe, run.user, run.session_id, run.turn_id)
            await pipe.execute()

    # -- process life -------------------------------------------------------------------

    def local_run(self, turn_id: str) -> TurnRun | None:
        """The turn, if it runs in this process."""
        return self._runs.get(turn_id)

    @property
    def active_turns(self) -> int:
        """Turns running in this process (their tasks included: none outlives its turn)."""
        return max(len(self._runs), len(self._tasks))

    def start_background(self) -> None:
        self._poller = asyncio.create_task(self._poll_stops(), name="turn-stop-poller")

    async def _poll_stops(self) -> None:
        """Stop requests reach the turn's own process through Redis, whichever instance took them."""
        seen: bytes | None = None
        while True:
            await asyncio.sleep(STOP_POLL_INTERVAL)
            runs = [run for run in self._runs.values() if not run.stop.is_set()]
            if not runs:
                continue
            try:
                # One read per poll whatever the number of turns; their flags only on a change.
                token = await self._log.stop_token()
                if token == seen:
                    continue
                flags = await self._log.stop_requested([(run.user, run.turn_id) for run in runs])
                seen = token
            except StoreUnavailable:
                continue
            for run, requested in zip(runs, flags, strict=True):
                if requested:
                    run.stop.set()

    async def shutdown(self) -> None:
        """End every running turn with `server_shutdown` and wait for their final writes."""
        self.closing = True
        if self._poller is not None:
            await _cancel(self._poller)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)


class ServerShutdown(ChatError):
    code = "server_shutdown"
    message = "The server is restarting; send your message again in a moment."


def _as_chat_error(exc: BaseException | None) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    logger.error("turn crashed", exc_info=exc)
    return ChatError()


def error_payload(error: ChatError) -> dict[str, Any]:
    return {"type": "error", "code": error.code, "content": error.message}


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
