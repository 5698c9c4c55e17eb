"""`chatctl`, the admin command line: API keys, sessions, history cleanup, export and import.

It reads the same settings as the server (REDIS_URL, REDIS_CLUSTER, REDIS_PREFIX, `.env`).
With REDIS_URL unset it connects to the embedded Redis of the server (the Unix socket under
DATA_DIR), and says so if that is not running: it never starts one of its own, because a
server started meanwhile would reuse it and lose its store when the command ends.

Every command prints machine-readable JSON with `--json`, and fails with exit status 1 and
a one-line reason on stderr (2 for a usage error, 130 when interrupted with Ctrl+C).
Destructive commands ask for confirmation unless `--yes`, and show a progress bar on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import orjson
import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from config import Settings
from personachat.embedded_redis import EmbeddedRedis
from personachat.errors import ChatError, StoreUnavailable
from personachat.export import document_markdown
from personachat.history import HistoryStore, Limits
from personachat.identity import ApiKeyStore
from personachat.keyspace import KeySpace, is_session_id, is_user_id
from personachat.maintenance import BatchHook, ExportFormatError, Maintenance, Tally
from personachat.redisconn import UNREACHABLE, Redis, create_redis

T = TypeVar("T")
DAY_MS = 86_400_000

app = typer.Typer(
    name="chatctl",
    help="Administer the persona chat service: API keys, sessions, cleanup, export and import.\n\n"
    "Reads the server's settings (REDIS_URL, REDIS_CLUSTER, REDIS_PREFIX, .env).\n\n"
    "Example: chatctl keys create --user alice --label laptop",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
sessions_app = typer.Typer(help="List sessions.", no_args_is_help=True)
history_app = typer.Typer(help="Delete a user's conversations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(sessions_app, name="sessions")
app.add_typer(history_app, name="history")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
UserOption = Annotated[str, typer.Option("--user", "-u", help="The user id (see `sessions list`).")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, max=10_000, help="Sessions or keys per batch.")]


class ExportFormat(StrEnum):
    json = "json"
    markdown = "markdown"


# -- plumbing -------------------------------------------------------------------------------


@dataclass
class Tools:
    settings: Settings
    redis: Redis
    keys: KeySpace

    def maintenance(self, batch_size: int = 500) -> Maintenance:
        ttl = self.settings.history_ttl_seconds
        return Maintenance(self.redis, self.keys, history_ttl_seconds=ttl, batch_size=batch_size)

    def store(self) -> HistoryStore:
        return HistoryStore(self.redis, self.keys, Limits.from_settings(self.settings))


class CommandFailed(Exception):
    """A reason to stop with exit status 1, printed as one line."""


def fail(reason: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {reason}", err=True)
    raise typer.Exit(code)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"invalid setting {'.'.join(str(p) for p in first['loc']).upper()}: {first['msg']}")


def _redis_url(settings: Settings) -> str:
    if settings.redis_url is not None:
        return settings.redis_url
    embedded = EmbeddedRedis(settings.data_dir)
    if not embedded.socket.exists():
        raise CommandFailed(
            f"REDIS_URL is unset and the embedded Redis is not running ({embedded.socket} is missing): "
            "start the service (python start_server.py), or set REDIS_URL"
        )
    return embedded.url


@contextlib.asynccontextmanager
async def _connect(settings: Settings) -> AsyncIterator[Tools]:
    url = _redis_url(settings)
    redis = create_redis(url, cluster=settings.redis_cluster, max_connections=16)
    try:
        try:
            await redis.ping()
        except UNREACHABLE as exc:
            raise CommandFailed(f"Redis is unreachable at {_redacted(url)}: {exc}") from exc
        yield Tools(settings, redis, KeySpace(settings.redis_prefix))
    finally:
        with contextlib.suppress(*UNREACHABLE):
            await redis.aclose()


def run(job: Callable[[Tools], Awaitable[T]]) -> T:
    """Run one async job against Redis, turning every expected failure into one line."""
    settings = _load_settings()

    async def main() -> T:
        async with _connect(settings) as tools:
            return await job(tools)

    try:
        return asyncio.run(main())
    except CommandFailed as exc:
        fail(str(exc))
    except (StoreUnavailable, *UNREACHABLE) as exc:
        fail(f"Redis is unreachable: {exc}")
    except ChatError as exc:
        fail(exc.message)
    except RedisError as exc:  # e.g. a command refused by the server: say which, in one line
        fail(f"Redis refused the operation: {exc}")
    except KeyboardInterrupt:
        fail("interrupted; what was done is kept, run the same command again to finish", code=130)


def emit(as_json: bool, data: Any, text: str | Callable[[], None]) -> None:
    """Print `data` as JSON, or the human text (a string, or a function that prints)."""
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif callable(text):
        text()
    else:
        typer.echo(text)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "", style="progress.data.speed")


@contextlib.contextmanager
def progress(description: str, total: int | None, *, quiet: bool) -> Any:
    """A progress bar on stderr with counts and rate; yields the hook that advances it."""
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(count: int) -> None:
            bar.advance(task, count)

        hook: BatchHook = advance
        yield hook


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _tally_dict(tally: Tally, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "deleted": tally.deleted,
        "by_kind": tally.by_kind,
        "keys": tally.keys,
        "bytes": tally.bytes,
        "skipped_running": [asdict(ref) for ref in tally.skipped_running],
        "skipped_active": tally.skipped_active,
    }


def _tally_text(tally: Tally, dry_run: bool, what: str) -> str:
    verb = "would delete" if dry_run else "deleted"
    kinds = ", ".join(f"{count} {kind}" for kind, count in tally.by_kind.items()) or f"0 {what}"
    line = f"{verb} {kinds} ({tally.keys} keys, {_human_bytes(tally.bytes)})"
    if tally.skipped_running:
        line += f"; skipped {len(tally.skipped_running)} with a running answer"
    if tally.skipped_active:
        line += f"; skipped {tally.skipped_active} active again since selected"
    return line


def _check_user(user: str) -> str:
    if not is_user_id(user):
        fail(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    return user


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    try:
        agreed = typer.confirm(question, default=False, err=True)
    except click.exceptions.Abort:  # no answer (stdin closed), or Ctrl+C
        fail("confirmation needed: answer y, or run it again with --yes")
    if not agreed:
        fail("nothing done")


# -- keys -----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    user: UserOption,
    label: Annotated[str, typer.Option("--label", "-l", help="A note to recognise the key by.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create an API key for USER and print it (once: only its hash is stored).

    Example: chatctl keys create --user alice --label "backup script"
    then: curl -H "Authorization: Bearer <key>" http://127.0.0.1:8000/chat/sessions
    """
    _check_user(user)

    async def job(tools: Tools) -> tuple[str, Any]:
        return await ApiKeyStore(tools.redis, tools.keys).create(user, label)

    key, info = run(job)
    emit(as_json, {"key": key, **asdict(info)}, f"{key}\n(key id {info.key_id} for user {user}; shown only once)")


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """List API keys: id, user, label, creation time (never the keys themselves).

    Example: chatctl keys list --json
    """

    async def job(tools: Tools) -> list[Any]:
        return await ApiKeyStore(tools.redis, tools.keys).list()

    infos = [asdict(info) for info in run(job)]

    def table() -> None:
        out = Table("key id", "user", "label", "created")
        for info in infos:
            out.add_row(info["key_id"], info["user_id"], info["label"], info["created_at"])
        Console().print(out)

    emit(as_json, {"keys": infos, "total": len(infos)}, table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id from `keys list`.")], as_json: JsonOption = False
) -> None:
    """Revoke an API key: requests with it get 401 from now on.

    Example: chatctl keys revoke 3f2a9c1b7d4e
    """

    async def job(tools: Tools) -> bool:
        return await ApiKeyStore(tools.redis, tools.keys).revoke(key_id)

    if not run(job):
        fail(f"no API key with id {key_id!r}")
    emit(as_json, {"key_id": key_id, "revoked": True}, f"revoked {key_id}")


# -- sessions and history --------------------------------------------------------------------


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
        _check_user(user)
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
    _check_user(user)
    if session is not None and not is_session_id(session):
        fail(f"invalid session id {session!r}")

    if session is not None:
        _confirm(f"Delete session {session} of {user}?", yes)

        async def one(tools: Tools) -> None:
            await tools.store().delete(user, session)

        run(one)
        emit(as_json, {"deleted": 1, "session_id": session}, f"deleted session {session}")
        return

    async def count(tools: Tools) -> int:
        return await tools.maintenance().count_sessions(user)

    total = run(count)
    _confirm(f"Delete all {total} sessions of {user}?", yes)

    async def every(tools: Tools) -> Tally:
        with progress("deleting", total, quiet=as_json) as hook:
            return await tools.maintenance().delete_sessions(user, on_batch=hook)

    tally = run(every)
    emit(as_json, _tally_dict(tally, False), _tally_text(tally, False, "sessions"))


# -- cleanup ---------------------------------------------------------------------------------


@app.command()
def cleanup(
    idle_days: Annotated[
        int | None, typer.Option("--idle-days", min=1, help="Delete sessions idle longer than this many days.")
    ] = None,
    orphans: Annotated[bool, typer.Option("--orphans", help="Remove keys that no longer belong to a session.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go (counts and bytes).")] = False,
    yes: YesOption = False,
    batch_size: BatchOption = 500,
    as_json: JsonOption = False,
) -> None:
    """Delete idle sessions and/or orphaned keys, in batches; safe to interrupt and run again.

    --orphans removes turn streams and message lists whose session is gone, index entries
    pointing at deleted sessions, and expired entries of the running-turn sets.
    A session whose answer is being generated is never deleted.

    Examples:

    \b
      chatctl cleanup --idle-days 90 --dry-run
      chatctl cleanup --idle-days 90 --yes
      chatctl cleanup --orphans --dry-run --json
    """
    if idle_days is None and not orphans:
        fail("say what to clean up: --idle-days N, --orphans, or both", code=2)
    cutoff = None if idle_days is None else time.time() * 1000 - idle_days * DAY_MS
    results: dict[str, Any] = {}
    lines: list[str] = []

    if cutoff is not None:

        async def count(tools: Tools) -> int:
            return await tools.maintenance(batch_size).count_sessions(None, cutoff)

        total = run(count)
        if not dry_run:
            _confirm(f"Delete {total} sessions idle for more than {idle_days} days?", yes)

        async def idle(tools: Tools) -> Tally:
            with progress("idle sessions", total, quiet=as_json) as hook:
                return await tools.maintenance(batch_size).delete_sessions(None, cutoff, dry_run=dry_run, on_batch=hook)

        tally = run(idle)
        results["idle_sessions"] = _tally_dict(tally, dry_run)
        lines.append(_tally_text(tally, dry_run, "sessions"))

    if orphans:

        def orphan_pass(dry: bool) -> Callable[[Tools], Awaitable[Tally]]:
            async def job(tools: Tools) -> Tally:
                total = None if hasattr(tools.redis, "get_primaries") else await tools.redis.dbsize()
                with progress("scanning keys", total, quiet=as_json) as hook:
                    return await tools.maintenance(batch_size).clean_orphans(dry_run=dry, on_batch=hook)

            return job

        if not dry_run and not yes:
            preview = run(orphan_pass(True))
            _confirm(f"Remove {preview.deleted} orphaned keys and entries?", yes)
        tally = run(orphan_pass(dry_run))
        results["orphans"] = _tally_dict(tally, dry_run)
        lines.append(_tally_text(tally, dry_run, "orphans"))

    emit(as_json, results, "\n".join(lines))


# -- export, import, stats -------------------------------------------------------------------


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
    _check_user(user)
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
        f"API keys {data['api_keys']}; {data['keys']} keys using {_human_bytes(data['bytes'])} "
        f"under prefix '{data['prefix']}'"
    )
    emit(as_json, data, text)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
