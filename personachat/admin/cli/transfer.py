"""`chatctl export`, `chatctl import` and `chatctl stats`."""

from __future__ import annotations

import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from personachat.admin.cli import app
from personachat.admin.cli.common import (
    CommandFailed,
    JsonOption,
    Tools,
    UserOption,
    check_user,
    emit,
    fail,
    human_bytes,
    progress,
    run,
)
from personachat.admin.export import document_markdown
from personachat.store.keys import is_session_id
from personachat.store.maintenance import ExportFormatError

T = TypeVar("T")
DAY_MS = 86_400_000


class ExportFormat(StrEnum):
    json = "json"
    markdown = "markdown"


@app.command()
def export(
    user: UserOption,
    session: Annotated[str | None, typer.Option("--session", "-s", help="Only this session.")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="json (can be imported) or markdown.")] = (
        ExportFormat.json
    ),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")] = None,
) -> None:
    """Export a user's sessions (or one) with their metadata and messages.

    Examples:

    \b
      chatctl export --user alice > alice.json
      chatctl export --user alice --session 0f3c... --format markdown -o chat.md
    """
    check_user(user)
    if session is not None and not is_session_id(session):
        fail(f"invalid session id {session!r}")

    async def job(tools: Tools) -> dict[str, Any]:
        return await tools.maintenance().export(user, session)

    document = run(job)
    if session is not None and not document["sessions"]:
        fail(f"user {user} has no session {session}")
    if fmt is ExportFormat.json:
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = document_markdown(document)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"exported {len(document['sessions'])} sessions to {output}", err=True)


@app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="A JSON export (from `chatctl export`), or - for stdin.")],
    as_json: JsonOption = False,
) -> None:
    """Import sessions from a JSON export; sessions that already exist are left as they are.

    Example: chatctl import alice.json
    """
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        document = orjson.loads(raw)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except orjson.JSONDecodeError as exc:
        fail(f"{file} is not JSON: {exc}")

    async def job(tools: Tools) -> tuple[int, int]:
        try:
            return await tools.maintenance().import_(document)
        except ExportFormatError as exc:
            raise CommandFailed(f"{file}: {exc}") from exc

    imported, skipped = run(job)
    emit(
        as_json,
        {"imported": imported, "skipped_existing": skipped},
        f"imported {imported} sessions; {skipped} already present were left as they are",
    )


@app.command()
def stats(as_json: JsonOption = False) -> None:
    """Users, sessions, messages, API keys, and the Redis memory used by the service's keys.

    Example: chatctl stats --json
    """

    async def job(tools: Tools) -> dict[str, Any]:
        with progress("scanning keys", None, quiet=True) as hook:
            result = await tools.maintenance().stats(on_batch=hook)
        return {**asdict(result), "prefix": tools.keys.prefix}

    data = run(job)
    text = (
        f"users {data['users']}, sessions {data['sessions']}, messages {data['messages']}, "
        f"API keys {data['api_keys']}; {data['keys']} keys using {human_bytes(data['bytes'])} "
        f"under prefix '{data['prefix']}'"
    )
    emit(as_json, data, text)
