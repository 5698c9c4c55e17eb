"""Running a turn: admission, the model call, its events, stop, and the final commit.

A turn is one user message and the model's answer. Once admitted it runs as a task of its
own, independent of the HTTP request that started it: a client that disconnects does not
stop it, and the answer is stored when it ends. Its events (`start`, `chunk`..., then `end`
or `error`) are kept in memory for readers in this process and written in batches to the
turn's Redis stream (`turnlog`), from which readers in other processes, and clients
resuming with `Last-Event-ID`, are served (`readers`). A turn is one task; one task per
process (the flusher) writes the events of every running turn, and renews their leases, in
one pipeline per FLUSH_INTERVAL.

Guarantees:
- event ids are `<turn id>:<seq>`; a reader never sees an event twice or out of order;
- the answer is committed with the `end` event in one idempotent script, so `end` means
  stored, exactly once, even when Redis's reply is lost and the write is sent again;
- a failed turn stores nothing in history (the client keeps the message and may retry);
  a stopped turn stores the partial answer with `"stopped": true`;
- a turn holds its session by a lease it renews (every third of TURN_LEASE_SECONDS, and with
  each batch of events): a turn that loses it (its process stalled past it, or a stop ended
  it as ownerless) stores nothing and ends with `turn_lost`;
- the model is the send's, else the session's, else the persona's, else the default
  (models.py); the prompt fits its context window (context.py): a message that cannot fit
  alone is 413 before anything is stored, checked before admission when the model is known
  and after it otherwise, giving the lease back (the admission writes no event, so no turn
  stream is left); `start` carries `model` and `context` and is written, lease-checked, as
  the turn's first event before the turn is announced; a provider that still answers
  "context length exceeded" gets one retry with half the history, reported in `end`'s
  `context`; reported token usage goes into `end`, the stored answer and the user's totals;
- every turn ends: model errors and timeouts, the turn deadline, a stop request (from any
  instance: pushed by pub/sub, with a durable flag behind it) and server shutdown each end it
  with one final event, its lease released by the same script; on any other failure the
  lease is released on its own, or runs out, if the process died. A stop of a turn whose
  process is gone ends it there and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from personachat import metrics
from personachat.context import check_alone, fit
from personachat.errors import (
    ChatError,
    EmptyMessage,
    InvalidRequest,
    MessageTooLong,
    ServerShutdown,
    StoreUnavailable,
    UpstreamError,
)
from personachat.llm import Completion, ContextLengthExceeded, Models
from personachat.models import ModelEntry
from personachat.personas import Persona, PersonaResolver
from personachat.store.client import Redis
from personachat.store.history import HistoryStore, now_iso
from personachat.store.keys import is_client_message_id
from personachat.store.turnlog import Append, TurnLog, is_terminal
from personachat.store.usage import UsageStore
from personachat.titles import Titles

logger = logging.getLogger(__name__)

# Seconds between batched writes of the running turns' events to Redis: one task of the
# process writes every turn's new events (and the leases due for renewal) in one pipeline.
# Readers in the turn's own process are served from memory at once; this only delays
# readers on other instances.
FLUSH_INTERVAL = 0.25
# Adaptive coalescing: while the process's loop is busy (its CPU over the last flush interval
# at least BUSY_CPU_SHARE of a core), a chunk's readers are woken up to COALESCE_SECONDS
# later, so that the chunks that come meanwhile go out in the same write. The start, the
# first chunk (time to first token) and the final event never wait; an idle process never
# holds anything. Each event keeps its own id and payload: only the writes are fewer.
COALESCE_SECONDS = 0.02
BUSY_CPU_SHARE = 0.5
# Stop requests are pushed (pub/sub); this slow poll of the durable flags only catches those
# published while this process was not subscribed.
STOP_POLL_INTERVAL = 1.0
# How long a stop waits for the turn's instance before ending the turn itself: well over the
# fallback poll, so a live owner that missed the push still ends (and stores) its own turn.
STOP_WAIT = 3.0
# Tries of the `start` event's write (0.25 s, 0.5 s, 1 s apart): a turn rides over a short outage.
START_ATTEMPTS = 4


@dataclass
class TurnRequest:
    user: str
    session_id: str
    message: str
    role: str | None = None
    model: str | None = None  # this message's model (a listed id), else the session's...
    # Rewriting the conversation: the new turn replaces this turn and every later one.
    from_turn: str | None = None
    # Idempotent sends: a repeat of a send with this id reads the turn it started (`Replay`).
    client_message_id: str | None = None
    # A client's own sampling bounds (the OpenAI-compatible API): a persona that pins a
    # temperature keeps it; max_tokens is capped at the model's max_output_tokens (llm.Models).
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class OneOffRequest:
    """An answer that belongs to no session (the OpenAI-compatible API without X-Session-Id):
    the persona's system prompt, then `messages` (the client's own user and assistant
    messages, oldest first). Nothing of it is stored; it counts against the user's limits."""

    user: str
    role: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Replay:
    """What `TurnService.start` answers for a repeated send (same `client_message_id`, same
    session): no turn was started; the caller reads `turn_id`'s events from its start
    (`readers.TurnReaders.open(..., f"{turn_id}:0")`), live when it still runs."""

    session_id: str
    turn_id: str


@dataclass
class Pace:
    """How long a chunk may wait for the next before its readers are woken (0: not at all);
    one per process's turns, set by the flusher from how busy the process is."""

    hold: float = 0.0


class StopRequest(asyncio.Event):
    """A turn's stop flag: an Event whose `set` also ends the turn's wait for the model at
    once (`on_set`, which the turn points at its deadline while it reads the answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_set: Callable[[], object] | None = None

    def set(self) -> None:
        if not self.is_set():
            super().set()
            if self.on_set is not None:
                self.on_set()


@dataclass
class TurnRun:
    """A turn running in this process: its events so far, and who waits for more."""

    turn_id: str
    user: str
    session_id: str
    persona: Persona
    model: ModelEntry
    context: dict[str, Any] = field(default_factory=dict)  # {"messages", "dropped"} sent
    payloads: list[bytes] = field(default_factory=list)  # payloads[i] is event seq i + 1
    flushed: int = 0  # events known to be in Redis (a failed write may have stored more)
    finished: bool = False
    renewed_at: float = field(default_factory=time.monotonic)  # when the lease was last renewed
    from_turn: str | None = None  # the turn this one replaces, with every later one
    first_answer: bool = False  # the session had no messages before: it may get a title
    temperature: float | None = None  # sent to the model (the persona's, else the request's)
    max_tokens: int | None = None  # the request's bound (capped at the model's)
    # False for a one-off answer (`start_one_off`): no session, nothing written to Redis but
    # its slot in the user's limits; its events live in memory for its one reader.
    stored: bool = True
    stop: StopRequest = field(default_factory=StopRequest)
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Who waits for the next change: each waiter has a future of its own, so a reader
    # cancelled by its client's disconnect cannot cancel the others' wait.
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    pace: Pace = field(default_factory=Pace)
    _held: asyncio.TimerHandle | None = None  # a wake put off for coalescing

    def event_id(self, seq: int) -> bytes:
        return f"{self.turn_id}:{seq}".encode()

    def append(self, payload: dict[str, Any]) -> None:
        self.payloads.append(orjson.dumps(payload))
        self._wake()

    def append_chunk(self, text: str) -> None:
        """A chunk of the answer; its readers may be woken a little later (`Pace`), except for
        the first chunk."""
        self.payloads.append(orjson.dumps({"type": "chunk", "content": text}))
        hold = self.pace.hold
        if hold and len(self.payloads) > 2:
            if self._held is None:
                self._held = asyncio.get_running_loop().call_later(hold, self._wake)
            return
        self._wake()

    @property
    def ended(self) -> bool:
        """Whether the final event is in (it is always the last one)."""
        return bool(self.payloads) and is_terminal(self.payloads[-1])

    def finish(self) -> None:
        self.finished = True
        self._wake()
        self.done.set()

    def _wake(self) -> None:
        if self._held is not None:
            self._held.cancel()  # (a no-op when it is this call)
            self._held = None
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next change (append or finish)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


class TurnService:
    def __init__(
        self,
        redis: Redis,
        store: HistoryStore,
        log: TurnLog,
        personas: PersonaResolver,
        model: Models,
        *,
        usage: UsageStore | None = None,
        max_message_chars: int,
        turn_timeout: float,
        max_turn_events: int,
        max_answer_chars: int = 200_000,
        titles: Titles | None = None,
    ) -> None:
        self._redis = redis  # every Redis command goes through the store; kept for the app's wiring
        self._store = store
        self._log = log
        self._personas = personas
        self._model = model
        self._usage = usage
        self._max_message_chars = max_message_chars
        self._deadline = max(turn_timeout * 0.9, turn_timeout - 5)
        self._max_events = max_turn_events
        self._max_answer_chars = max_answer_chars
        self._titles = titles  # automatic titles (AUTO_TITLE), after a session's first answer
        self._lease_ms = int(store.lease_seconds * 1000)
        self._runs: dict[str, TurnRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[None]] = set()  # lease releases after a failure
        self._slots: dict[str, TurnRun] = {}  # one-off answers running here (no session, a slot)
        self._poller: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writes_due = asyncio.Event()  # set while turns run: the flusher has work
        self._pace = Pace()
        self.listening = asyncio.Event()  # set while subscribed to stop requests
        self.closing = False

    # -- starting, stopping and reading turns -------------------------------------------

    async def start(self, request: TurnRequest) -> TurnRun | Replay:
        """Admit and start a turn; raises the HTTP errors known before streaming starts.

        A send whose `client_message_id` already started a turn in this session starts
        nothing: the answer is a `Replay` of that turn.
        """
        if self.closing:
            raise ServerShutdown()  # 503: a turn admitted now would be cut off at once
        message = request.message.strip()
        if not message:
            raise EmptyMessage()
        if len(message) > self._max_message_chars:
            raise MessageTooLong(self._max_message_chars)
        if request.client_message_id is not None and not is_client_message_id(request.client_message_id):
            raise InvalidRequest("client_message_id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'.")
        chosen = await self._personas.resolve(request.user, request.role) if request.role is not None else None
        registry = self._model.registry
        if request.model is not None:  # 400 unknown_model; and a message too long for it is 413 now
            entry = registry.get(request.model)
            check_alone(
                chosen.system_prompt if chosen else "",
                message,
                model=entry.id,
                context_window=entry.context_window,
                max_output=entry.max_output_tokens,
            )
        # Named before admission, so that a re-sent admission finds its own lease (see history.py).
        turn_id = secrets.token_hex(8)
        try:
            admission = await self._store.admit_turn(
                request.user,
                request.session_id,
                turn_id,
                role=chosen.key if chosen else None,
                default_role=self._personas.default_key,
                known_roles=self._personas.catalog.keys,
                from_turn=request.from_turn,
                client_message_id=request.client_message_id,
            )
        except (StoreUnavailable, asyncio.CancelledError):
            # The admission may have been applied with its reply lost: give the lease back.
            self._release_later(request.user, request.session_id, turn_id)
            raise
        if admission.duplicate_of is not None:
            return Replay(request.session_id, admission.duplicate_of)
        try:
            if self.closing:  # the shutdown began while this turn was being admitted
                raise ServerShutdown()
            # A session whose persona was deleted (or left the roles file) goes on with the default.
            persona = chosen or await self._personas.for_session(request.user, admission.role)
            entry = registry.choose(request.model, admission.model, persona.model)
            system = {"role": "system", "content": persona.system_prompt}
            user_prompt = {"role": "user", "content": message}
            fitted = fit(
                system,
                admission.window,
                user_prompt,
                model=entry.id,
                context_window=entry.context_window,
                max_output_tokens=entry.max_output_tokens,
            )
            run = TurnRun(turn_id, request.user, request.session_id, persona, entry, fitted.context, pace=self._pace)
            run.from_turn = request.from_turn
            run.first_answer = admission.before == 0 and request.from_turn is None
            run.temperature = _temperature(persona, request.temperature)
            run.max_tokens = request.max_tokens
            start = {"type": "start", "session_id": request.session_id, "turn_id": turn_id, "role": persona.key}
            run.append({**start, "model": entry.id, "context": fitted.context})
            await self._write_start(run)
            run.flushed = 1
        except asyncio.CancelledError:
            self._release_later(request.user, request.session_id, turn_id)
            raise
        except ChatError:
            # Refused after admission (413, shutdown, Redis): nothing was stored, and the lease
            # is given back before the client hears of it, so the session is free at once.
            try:
                await self._store.release_turn(request.user, request.session_id, turn_id)
            except StoreUnavailable:
                self._release_later(request.user, request.session_id, turn_id)
            raise
        user_message = {"role": "user", "content": message, "timestamp": now_iso(), "turn_id": run.turn_id}
        prompt = [system, *fitted.history, user_prompt]
        self._runs[run.turn_id] = run
        self._writes_due.set()
        task = asyncio.create_task(self._run(run, prompt, user_message), name=f"turn-{run.turn_id}")
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, run))
        return run

    async def start_one_off(self, request: OneOffRequest) -> TurnRun:
        """Start an answer that belongs to no session; raises the errors known before it runs
        (400 unknown role, 413 too long for the model, 429, 503).

        It runs as a turn does, with the same model call, time limits and MAX_ANSWER_CHARS,
        but its events stay in memory (read them with `readers.TurnReaders.of`, whose reader
        stops it when it leaves: no one else can read it) and nothing is stored. It holds a
        slot of the user's concurrent answers, as a lease, and counts against the rate limit.
        """
        if self.closing:
            raise ServerShutdown()
        persona = await self._personas.resolve(request.user, request.role)
        entry = self._model.registry.choose(None, None, persona.model)
        system = {"role": "system", "content": persona.system_prompt}
        *window, last = request.messages  # the route refuses an empty list
        fitted = fit(
            system,
            window,
            last,
            model=entry.id,
            context_window=entry.context_window,
            max_output_tokens=entry.max_output_tokens,
        )
        turn_id = secrets.token_hex(8)
        await self._store.admit_one_off(request.user, turn_id)
        run = TurnRun(turn_id, request.user, "", persona, entry, fitted.context, stored=False, pace=self._pace)
        run.temperature = _temperature(persona, request.temperature)
        run.max_tokens = request.max_tokens
        run.append({"type": "start", "session_id": None, "turn_id": turn_id, "role": persona.key, "model": entry.id})
        self._slots[run.turn_id] = run
        self._writes_due.set()
        task = asyncio.create_task(self._run(run, [system, *fitted.history, last], last), name=f"one-off-{turn_id}")
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, run))
        return run

    async def _write_start(self, run: TurnRun) -> None:
        """Write the `start` event, so that it is in the stream before anyone hears of the turn
        (a resume on another instance finds it). The append checks the lease, like every
        write, and is idempotent: it is sent again over a short outage (a lost reply)."""
        for attempt in range(START_ATTEMPTS):
            try:
                if not await self._log.append(
                    run.user, run.session_id, run.turn_id, 1, run.payloads, lease_ms=self._lease_ms
                ):
                    raise TurnLost()
                return
            except StoreUnavailable:
                if attempt == START_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.25 * 2**attempt)

    def _task_done(self, run: TurnRun, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _log_failure(task)  # a bug in the turn's own clean-up; its readers got internal_error
        if not run.finished:
            # Cancelled before it began (a shutdown right after admission): nothing ran its
            # clean-up, so end its readers and give its lease back here.
            self._runs.pop(run.turn_id, None)
            self._slots.pop(run.turn_id, None)
            run.append(error_payload(ServerShutdown()))
            run.finish()
            self._release_later(run.user, run.session_id, run.turn_id)

    def _release_later(self, user: str, session_id: str, turn_id: str) -> None:
        async def release() -> None:
            # Redis may be away (that is often why the turn failed): try until it is back, or
            # until the lease has run out by itself anyway.
            deadline = time.monotonic() + self._lease_ms / 1000
            while True:
                try:
                    if session_id:
                        await self._store.release_turn(user, session_id, turn_id)
                    else:  # a one-off answer's slot
                        await self._store.release_slot(user, turn_id)
                    return
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        return
                    await asyncio.sleep(0.5)

        chore = asyncio.create_task(release(), name=f"release-{turn_id}")
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)
        chore.add_done_callback(_log_failure)

    async def stop(self, user: str, session_id: str) -> tuple[str | None, bool]:
        """Stop the session's running turn, wherever it runs: (its id, whether it is now ended).

        The request reaches the turn's instance at once (pub/sub), or through the durable
        flag. A turn whose instance does not end it within STOP_WAIT has no live owner (its
        process died, or lost Redis): it is ended here, with a `turn_lost` final event, and
        its lease released, so the session is usable again at once.
        """
        session = await self._store.get_session(user, session_id)
        turn_id = session.running_turn_id
        if turn_id is None:
            return None, False
        await self._log.request_stop(user, turn_id)
        run = self._runs.get(turn_id)
        if run is not None:
            run.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), timeout=5)
            return turn_id, run.finished
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if (await self._store.get_session(user, session_id)).running_turn_id != turn_id:
                return turn_id, True
        status = await self._store.end_lost_turn(user, session_id, turn_id, LOST_PAYLOAD, force=True)
        logger.warning("turn ended for its lost owner", extra={"turn_id": turn_id, "outcome": status})
        return turn_id, True

    # -- the turn itself ------------------------------------------------------------------

    async def _run(self, run: TurnRun, prompt: list[dict[str, Any]], user_message: dict[str, Any]) -> None:
        """The turn's one task: the answer is read here, its events are written by the
        process's flusher (`_flush_runs`), which also renews the lease."""
        answer: list[str] = []
        completion = Completion()
        started = time.monotonic()
        metrics.turn_started()
        try:
            try:
                ending = await self._answer(run, prompt, answer, completion)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the model's failure (a ChatError), or a bug in its call
                await self._fail(run, _as_chat_error(exc))
            else:
                if ending == "deadline":
                    await self._fail(run, UpstreamError("turn_timeout", "The answer took too long and was cut off."))
                else:
                    reason = "stopped" if ending == "stopped" else completion.finish_reason or "stop"
                    await self._commit(run, user_message, "".join(answer), reason, completion.usage)
        except asyncio.CancelledError:
            await asyncio.shield(self._fail(run, ServerShutdown()))
            raise
        except Exception:
            # A bug, not a model or Redis failure: log it, and still end every reader's
            # stream and give the session back (the final write releases the lease).
            logger.exception("turn crashed", extra={"turn_id": run.turn_id})
            if not run.ended:
                await self._fail(run, ChatError())
        finally:
            self._runs.pop(run.turn_id, None)
            self._slots.pop(run.turn_id, None)
            if not run.ended:  # the final write itself crashed: end the readers, free the lease
                run.append(error_payload(ChatError()))
                self._release_later(run.user, run.session_id, run.turn_id)
            run.finish()
            outcome = metrics.turn_ended(run.payloads[-1], time.monotonic() - started, len(answer))
            # The turn's one log line (with the request id of the request that started it).
            fields: dict[str, Any] = {"turn_id": run.turn_id, "session_id": run.session_id or None}
            fields.update(role=run.persona.key, model=run.model.id, events=len(run.payloads), **outcome)
            logger.info("turn ended" if run.stored else "one-off answer ended", extra=fields)

    async def _answer(
        self, run: TurnRun, prompt: list[dict[str, Any]], answer: list[str], completion: Completion
    ) -> str | None:
        """Read the model's answer into `answer` until it ends (None), a stop is requested
        ("stopped") or the turn's deadline passes ("deadline"). A stop ends the wait at once:
        it moves the deadline to now, so no task of its own waits for it."""
        try:
            async with asyncio.timeout(self._deadline) as limit:
                run.stop.on_set = functools.partial(_expire_now, limit)
                try:
                    if run.stop.is_set():  # asked before the turn began (its one reader left)
                        return "stopped"
                    await self._consume(run, prompt, answer, completion)
                finally:
                    run.stop.on_set = None  # before the deadline's exit: it cannot be moved after
        except TimeoutError:
            if not limit.expired():
                raise  # not the deadline's: a failure inside the call
            return "stopped" if run.stop.is_set() else "deadline"
        return None

    async def _consume(
        self, run: TurnRun, prompt: list[dict[str, Any]], answer: list[str], completion: Completion
    ) -> None:
        try:
            await self._stream_answer(run, prompt, answer, completion)
        except ContextLengthExceeded:
            if answer or len(prompt) <= 2:
                raise
            # The estimate let through a prompt the provider refuses: once, with half the history.
            history = prompt[1:-1]
            kept = history[len(history) // 2 :]
            dropped = run.context.get("dropped", 0) + len(history) - len(kept)
            run.context = {"messages": len(kept), "dropped": dropped, "retried": True}
            await self._stream_answer(run, [prompt[0], *kept, prompt[-1]], answer, completion)

    async def _stream_answer(
        self, run: TurnRun, prompt: list[dict[str, Any]], answer: list[str], completion: Completion
    ) -> None:
        started = time.monotonic()
        room = self._max_answer_chars  # what is left of MAX_ANSWER_CHARS
        stream = self._model.stream(
            run.model, prompt, completion, temperature=run.temperature, max_tokens=run.max_tokens
        )
        async for text in stream:
            text = text[:room]
            room -= len(text)
            answer.append(text)
            if len(answer) == 1:  # the first chunk (a retry only follows an empty answer)
                metrics.first_chunk(time.monotonic() - started)
            run.append_chunk(text)
            # Keep room for the final event; an answer cut at MAX_ANSWER_CHARS ends here too.
            if len(run.payloads) >= self._max_events - 1 or room == 0:
                completion.finish_reason = "length"
                return

    def _lose(self, run: TurnRun) -> None:
        """The lease is gone (it ran out, or a stop ended the turn for a presumed-dead owner):
        end the turn; its final write will store nothing and say so."""
        logger.warning("turn lost its lease", extra={"turn_id": run.turn_id})
        run.stop.set()

    async def _flush_runs(self) -> None:
        """The process's one writer of running turns' events: every FLUSH_INTERVAL, each
        turn's new events, and a renewal for each lease due (every third of it), go to Redis in
        one pipeline. A write that fails changes nothing here: the next one (or the turn's
        final write) sends those events again, and the store skips what it already has."""
        while True:
            if not self._runs and not self._slots:
                self._pace.hold = 0.0
                self._writes_due.clear()
                await self._writes_due.wait()
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(FLUSH_INTERVAL)
            busy = time.process_time() - cpu >= BUSY_CPU_SHARE * (time.monotonic() - wall)
            self._pace.hold = COALESCE_SECONDS if busy else 0.0
            try:
                await self._flush_once()
            except StoreUnavailable:
                continue  # the next round tries again; the leases have two more tries in them
            except Exception:
                # A bug: every running turn's lease depends on this task, so it must not end.
                logger.exception("flushing the running turns failed")

    async def _flush_once(self) -> None:
        now = time.monotonic()
        renew_after = self._lease_ms / 3000
        batch: list[tuple[TurnRun, int]] = []
        for run in list(self._runs.values()):
            # A turn whose final write is under way (or done) writes its own events.
            if run.writing.locked() or run.ended:
                continue
            count = len(run.payloads)
            if count > run.flushed or now - run.renewed_at >= renew_after:
                batch.append((run, count))
        if batch:
            await self._write_batch(batch)
        for run in [run for run in self._slots.values() if now - run.renewed_at >= renew_after]:
            await self._store.renew_slot(run.user, run.turn_id)  # one-off answers: rare, and one each
            run.renewed_at = time.monotonic()

    async def _write_batch(self, batch: list[tuple[TurnRun, int]]) -> None:
        for run, _ in batch:
            await run.writing.acquire()  # free (checked just before, nothing ran since): no wait
        try:
            appends = [
                Append(run.user, run.session_id, run.turn_id, run.flushed + 1, run.payloads[run.flushed : count])
                for run, count in batch
            ]
            # Shielded: a write under way is not abandoned halfway (the final writes wait for
            # it); if this wait is cancelled, its outcome is retrieved by the callback.
            write = asyncio.ensure_future(self._log.append_many(appends, lease_ms=self._lease_ms))
            write.add_done_callback(_retrieve)
            ours = await asyncio.shield(write)
        finally:
            for run, _ in batch:
                run.writing.release()
        written = time.monotonic()
        for (run, count), held in zip(batch, ours, strict=True):
            if not held:
                self._lose(run)
                continue
            run.flushed = count
            run.renewed_at = written

    async def _commit(
        self,
        run: TurnRun,
        user_message: dict[str, Any],
        text: str,
        finish_reason: str,
        usage: dict[str, int] | None = None,
    ) -> None:
        """Store the turn's messages, its remaining events and `end` in one step; then add the
        turn's token usage, when the provider reported it, to the user's totals."""
        answer: dict[str, Any] = {"role": "assistant", "content": text, "timestamp": now_iso(), "turn_id": run.turn_id}
        answer["persona"] = run.persona.key
        answer["model"] = run.model.id
        if finish_reason == "stopped":
            answer["stopped"] = True
        end: dict[str, Any] = {"type": "end", "session_id": run.session_id or None, "turn_id": run.turn_id}
        end["finish_reason"] = finish_reason
        if usage is not None:
            answer["usage"] = end["usage"] = usage
        if run.context.get("retried"):
            end["context"] = run.context
        unstored = StoreUnavailable("The answer could not be stored: Redis is unreachable.")
        status = await self._final_write(
            run, end, [user_message, answer], user_message["content"], error_payload(unstored)
        )
        if status == "ok" and usage is not None:
            metrics.tokens_used(run.model.id, usage["prompt_tokens"], usage["completion_tokens"])
            if self._usage is not None:
                try:
                    await self._usage.record(run.user, run.model.id, usage["prompt_tokens"], usage["completion_tokens"])
                except StoreUnavailable:
                    # The answer is stored; only these counts are lost (never counted twice).
                    logger.warning("token usage not recorded", extra={"turn_id": run.turn_id})

    async def _fail(self, run: TurnRun, error: ChatError) -> None:
        """End the turn with an `error` event; nothing is added to history."""
        payload = error_payload(error)
        logger.warning("turn failed", extra={"turn_id": run.turn_id, "code": error.code})
        await self._final_write(run, payload, [], "", payload)

    async def _final_write(
        self,
        run: TurnRun,
        final: dict[str, Any],
        messages: list[dict[str, Any]],
        title: str,
        if_unreachable: dict[str, Any],
    ) -> str | None:
        """Write the final event (and the messages) and release the lease, then end the readers
        in this process with what the store now says: `final`, `turn_lost` when the turn had
        lost its lease, or `if_unreachable` when Redis could not be written. A one-off answer
        stores nothing: its readers get `final`, and its slot is given back."""
        if not run.stored:
            run.append(final)
            self._release_later(run.user, "", run.turn_id)
            return "ok"
        async with run.writing:  # after any batch still being written, so ids stay in order
            payloads = [*run.payloads[run.flushed :], orjson.dumps(final)]
            try:
                status = await self._store.commit_turn(
                    run.user,
                    run.session_id,
                    run.turn_id,
                    first_seq=run.flushed + 1,
                    payloads=payloads,
                    messages=messages,
                    role=run.persona.key,
                    title=title,
                    lost_payload=LOST_PAYLOAD,
                    from_turn=run.from_turn,
                )
            except StoreUnavailable:
                self._release_later(run.user, run.session_id, run.turn_id)
                run.append(if_unreachable)
                return None
            if status == "lost":
                run.append(orjson.loads(LOST_PAYLOAD))
            else:
                run.append(final)
                if status == "ok" and messages and run.first_answer and self._titles is not None:
                    self._titles.schedule(run.user, run.session_id, messages, run.model.id)
            return str(status)

    # -- process life -------------------------------------------------------------------

    def local_run(self, turn_id: str) -> TurnRun | None:
        """The turn, if it runs in this process."""
        return self._runs.get(turn_id)

    @property
    def active_turns(self) -> int:
        """Turns running in this process (their tasks included: none outlives its turn)."""
        return max(len(self._runs), len(self._tasks))

    def start_background(self) -> None:
        self._listener = asyncio.create_task(self._listen_stops(), name="turn-stop-listener")
        self._poller = asyncio.create_task(self._poll_stops(), name="turn-stop-poller")
        self._flusher = asyncio.create_task(self._flush_runs(), name="turn-flusher")
        self._flusher.add_done_callback(_log_failure)

    async def _listen_stops(self) -> None:
        """Stop requests pushed by Redis pub/sub, on one connection of this process's own."""
        while True:
            try:
                async for turn_id in self._log.stop_requests(on_subscribed=self.listening.set):
                    run = self._runs.get(turn_id)
                    if run is not None:
                        run.stop.set()
            except StoreUnavailable:
                self.listening.clear()
                await asyncio.sleep(1.0)  # then subscribe again; the poll covers the gap

    async def _poll_stops(self) -> None:
        """The slow fallback: stop requests published while this process was not subscribed
        (a reconnect) still reach the turn's own process through the durable flags."""
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

    def begin_shutdown(self) -> None:
        """Refuse new turns (503) and end the running ones with `server_shutdown`, now."""
        self.closing = True
        for task in self._tasks:
            task.cancel()

    async def shutdown(self) -> None:
        """End every running turn with `server_shutdown` and wait for their final writes."""
        self.begin_shutdown()
        for background in (self._poller, self._listener):
            if background is not None:
                await _cancel(background)
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._flusher is not None:  # after the turns: their final writes may wait for its last write
            await _cancel(self._flusher)
        if self._titles is not None:
            await self._titles.aclose()
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=5)
            for chore in list(self._chores):  # Redis still away: those leases run out by themselves
                await _cancel(chore)


class TurnLost(ChatError):
    code = "turn_lost"
    message = "The server generating this answer stopped; send your message again."


# The final event of a turn ended without its owner (its process died, or it lost its lease):
# nothing of it was stored.
LOST_PAYLOAD = orjson.dumps({"type": "error", "code": TurnLost.code, "content": TurnLost.message})


def _expire_now(limit: asyncio.Timeout) -> None:
    """End the `async with limit:` block now, as if its time had come (a stop request)."""
    if not limit.expired():
        limit.reschedule(asyncio.get_running_loop().time())


def _as_chat_error(exc: BaseException | None) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    logger.error("turn crashed", exc_info=exc)
    return ChatError()


def _temperature(persona: Persona, requested: float | None) -> float | None:
    """A persona that pins a temperature keeps it; otherwise the request's (None: the model's)."""
    return persona.temperature if persona.temperature is not None else requested


def error_payload(error: ChatError) -> dict[str, Any]:
    return {"type": "error", "code": error.code, "content": error.message}


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback of a task nobody may be left to await: a store outage is expected and
    dropped, anything else is logged once (instead of asyncio's "exception never retrieved")."""
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, StoreUnavailable):
        logger.error("background write failed", exc_info=exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    """Done callback of a background task nobody awaits: its failure is logged, not lost."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("%s failed", task.get_name(), exc_info=exc)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it to end. Its own cancellation is swallowed; the caller's
    is not: a caller cancelled while it waits here gets CancelledError, as it should."""
    task.cancel()
    caller = asyncio.current_task()
    before = caller.cancelling() if caller is not None else 0
    try:
        await task
    except asyncio.CancelledError:
        if caller is not None and caller.cancelling() > before:
            raise
    except Exception:
        # It failed while being cancelled (its result was no longer wanted): say so, go on.
        logger.warning("task %s failed while cancelled", task.get_name(), exc_info=True)
