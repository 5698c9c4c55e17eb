"""What every chatctl command shares: settings, the Redis connection, output, progress, confirmation."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import orjson
import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from config import Settings
from personachat.embedded_redis import EmbeddedRedis
from personachat.errors import ChatError, StoreUnavailable
from personachat.store.client import UNREACHABLE, Redis, create_redis
from personachat.store.history import HistoryStore, Limits
from personachat.store.keys import KeySpace, is_user_id
from personachat.store.maintenance import BatchHook, Maintenance, Tally

T = TypeVar("T")
DAY_MS = 86_400_000

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
UserOption = Annotated[str, typer.Option("--user", "-u", help="The user id (see `sessions list`).")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, max=10_000, help="Sessions or keys per batch.")]


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


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def tally_dict(tally: Tally, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "deleted": tally.deleted,
        "by_kind": tally.by_kind,
        "keys": tally.keys,
        "bytes": tally.bytes,
        "skipped_running": [asdict(ref) for ref in tally.skipped_running],
        "skipped_active": tally.skipped_active,
    }


def tally_text(tally: Tally, dry_run: bool, what: str) -> str:
    verb = "would delete" if dry_run else "deleted"
    kinds = ", ".join(f"{count} {kind}" for kind, count in tally.by_kind.items()) or f"0 {what}"
    line = f"{verb} {kinds} ({tally.keys} keys, {human_bytes(tally.bytes)})"
    if tally.skipped_running:
        line += f"; skipped {len(tally.skipped_running)} with a running answer"
    if tally.skipped_active:
        line += f"; skipped {tally.skipped_active} active again since selected"
    return line


def check_user(user: str) -> str:
    if not is_user_id(user):
        fail(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    return user


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    try:
        agreed = typer.confirm(question, default=False, err=True)
    except click.exceptions.Abort:  # no answer (stdin closed), or Ctrl+C
        fail("confirmation needed: answer y, or run it again with --yes")
    if not agreed:
        fail("nothing done")
