"""Automatic session titles (AUTO_TITLE): one short request to the model after a session's
first answer.

Until then a session is named by its first message (the commit sets that title). After the
first answer, a background task asks the session's model for a title of at most 60
characters and stores it, unless the user has set a title (at the start or with PATCH): the
store only replaces a title that is still the first message's, and only once per session
(`HistoryStore.claim_auto_title`), so at most one title request is ever made per session,
by any instance.

It never blocks or fails the turn: the turn's `end` is sent before the task starts, the
request is bounded by TITLE_TIMEOUT, and a failure (model or Redis) is logged and leaves
the first message's title in place. It is off with the offline demo model, whose answers
are no titles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from personachat.errors import ChatError
from personachat.llm import Completion, Models
from personachat.store.history import TITLE_CHARS, HistoryStore

logger = logging.getLogger(__name__)

TITLE_TIMEOUT = 20.0  # seconds for the whole title request
EXCERPT_CHARS = 1_000  # of the first message and of the first answer, in the title prompt
MAX_PENDING = 100  # title requests in flight per process; more are skipped, not queued

TITLE_PROMPT = (
    "You name conversations. Reply with a short title for the conversation below, at most six "
    "words, in the language of the conversation: no quotes, no punctuation at the end, nothing else."
)


def title_prompt(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt of a title request: the instruction, then the first exchange, shortened."""
    lines = []
    for message in messages:
        speaker = "User" if message["role"] == "user" else "Assistant"
        lines.append(f"{speaker}: {str(message['content'])[:EXCERPT_CHARS]}")
    return [{"role": "system", "content": TITLE_PROMPT}, {"role": "user", "content": "\n\n".join(lines)}]


def clean_title(text: str) -> str:
    """The model's answer as a title: its first non-empty line, without quotes, markdown
    or a trailing period, at most TITLE_CHARS characters; "" when nothing is left."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = re.sub(r"[*_`#]+", "", line).strip()  # markdown emphasis and headings
    if line.lower().startswith("title:"):
        line = line[6:].strip()
    line = line.strip("\"'“”‘’「」『』").strip().rstrip(".。")
    if len(line) > TITLE_CHARS:
        line = line[: TITLE_CHARS - 1].rstrip() + "…"
    return line


class Titles:
    """Schedules the automatic title requests of this process and keeps their tasks."""

    def __init__(self, store: HistoryStore, models: Models, *, timeout: float = TITLE_TIMEOUT) -> None:
        self._store = store
        self._models = models
        self._timeout = timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by session id: one at a time per session

    def schedule(self, user: str, session_id: str, messages: Sequence[dict[str, Any]], model: str | None) -> None:
        """Ask for the session's title in the background (once per session; see the module)."""
        if session_id in self._tasks or len(self._tasks) >= MAX_PENDING:
            return
        task = asyncio.create_task(self._title(user, session_id, list(messages), model), name=f"title-{session_id}")
        self._tasks[session_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(session_id, None))

    async def _title(self, user: str, session_id: str, messages: list[dict[str, Any]], model: str | None) -> None:
        try:
            if not await self._store.claim_auto_title(user, session_id):
                return  # the user named it, or a title was asked for already
            pieces: list[str] = []
            # An async generator (annotated as an iterator): closed when left, so a title read
            # only in part ends its request at once.
            # The turn's model (a listed id), else the default one.
            entry = self._models.registry.choose(None, model, None)
            stream = cast(AsyncGenerator[str], self._models.stream(entry, title_prompt(messages), Completion()))
            async with asyncio.timeout(self._timeout), contextlib.aclosing(stream):
                async for text in stream:
                    pieces.append(text)
                    if sum(map(len, pieces)) > 4 * TITLE_CHARS:
                        break  # a title is a line: the rest is not read (aclosing ends the request)
            title = clean_title("".join(pieces))
            if title:
                await self._store.store_auto_title(user, session_id, title)
        except (ChatError, TimeoutError) as exc:
            # The first message's title stays; the turn is long over and was not affected.
            logger.warning("automatic title failed", extra={"session_id": session_id, "code": _code(exc)})

    async def wait(self) -> None:
        """Wait for the title requests in flight (tests; a shutdown cancels them instead)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ChatError) else "title_timeout"
