"""`chatctl sessions` and `chatctl history`: list sessions, delete a user's conversations."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from personachat.admin.cli import history_app, sessions_app
from personachat.admin.cli.common import (
    JsonOption,
    Tools,
    UserOption,
    YesOption,
    check_user,
    confirm,
    emit,
    fail,
    progress,
    run,
    tally_dict,
    tally_text,
)
from personachat.store.keys import is_session_id
from personachat.store.maintenance import Tally

T = TypeVar("T")
DAY_MS = 86_400_000


@sessions_app.command("list")
def sessions_list(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's sessions.")] = None,
    idle_days: Annotated[int | None, typer.Option("--idle-days", min=0, help="Only sessions idle that long.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Show at most this many (0: all).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """List sessions: id, user, title, messages, last activity.

    Examples: chatctl sessions list --user alice; chatctl sessions list --idle-days 90 --json
    """
    if user is not None:
        check_user(user)
    cutoff = None if idle_days is None else time.time() * 1000 - idle_days * DAY_MS

    async def job(tools: Tools) -> list[dict[str, Any]]:
        rows = []
        async for row in tools.maintenance().sessions(user, cutoff):
            rows.append({"user": row.user, **asdict(row.info)})
            if limit and len(rows) >= limit:
                break
        return rows

    rows = run(job)
    rows.sort(key=lambda row: row["last_activity"], reverse=True)

    def table() -> None:
        out = Table("user", "title", "messages", "last activity")
        out.columns.insert(0, Column("session", no_wrap=True, min_width=32))
        for row in rows:
            out.add_row(row["session_id"], row["user"], row["title"], str(row["messages"]), row["last_activity"])
        Console().print(out)
        typer.echo(f"{len(rows)} sessions")

    emit(as_json, {"sessions": rows, "total": len(rows)}, table)


@history_app.command("clear")
def history_clear(
    user: UserOption,
    session: Annotated[str | None, typer.Option("--session", "-s", help="Only this session.")] = None,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a user's sessions and their messages (one with --session, else all of them).

    Sessions with an answer being generated are skipped and reported.

    Examples: chatctl history clear --user alice --session 0f3c...; chatctl history clear --user alice --yes
    """
    check_user(user)
    if session is not None and not is_session_id(session):
        fail(f"invalid session id {session!r}")

    if session is not None:
        confirm(f"Delete session {session} of {user}?", yes)

        async def one(tools: Tools) -> None:
            await tools.store().delete_session(user, session)

        run(one)
        emit(as_json, {"deleted": 1, "session_id": session}, f"deleted session {session}")
        return

    async def count(tools: Tools) -> int:
        return await tools.maintenance().count_sessions(user)

    total = run(count)
    confirm(f"Delete all {total} sessions of {user}?", yes)

    async def every(tools: Tools) -> Tally:
        with progress("deleting", total, quiet=as_json) as hook:
            return await tools.maintenance().delete_sessions(user, on_batch=hook)

    tally = run(every)
    emit(as_json, tally_dict(tally, False), tally_text(tally, False, "sessions"))
