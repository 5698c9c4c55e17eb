"""`chatctl cleanup`: delete idle sessions and orphaned keys."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from personachat.admin.cli import app
from personachat.admin.cli.common import (
    BatchOption,
    JsonOption,
    Tools,
    YesOption,
    confirm,
    emit,
    fail,
    progress,
    run,
    tally_dict,
    tally_text,
)
from personachat.store.maintenance import Tally

T = TypeVar("T")
DAY_MS = 86_400_000


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
            confirm(f"Delete {total} sessions idle for more than {idle_days} days?", yes)

        async def idle(tools: Tools) -> Tally:
            with progress("idle sessions", total, quiet=as_json) as hook:
                return await tools.maintenance(batch_size).delete_sessions(None, cutoff, dry_run=dry_run, on_batch=hook)

        tally = run(idle)
        results["idle_sessions"] = tally_dict(tally, dry_run)
        lines.append(tally_text(tally, dry_run, "sessions"))

    if orphans:

        def orphan_pass(dry: bool) -> Callable[[Tools], Awaitable[Tally]]:
            async def job(tools: Tools) -> Tally:
                total = None if hasattr(tools.redis, "get_primaries") else await tools.redis.dbsize()
                with progress("scanning keys", total, quiet=as_json) as hook:
                    return await tools.maintenance(batch_size).clean_orphans(dry_run=dry, on_batch=hook)

            return job

        if not dry_run and not yes:
            preview = run(orphan_pass(True))
            confirm(f"Remove {preview.deleted} orphaned keys and entries?", yes)
        tally = run(orphan_pass(dry_run))
        results["orphans"] = tally_dict(tally, dry_run)
        lines.append(tally_text(tally, dry_run, "orphans"))

    emit(as_json, results, "\n".join(lines))
