"""`chatctl usage`: token totals per user and model, as the providers reported them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from personachat.admin.cli import app
from personachat.admin.cli.common import JsonOption, Tools, check_user, emit, run
from personachat.store.usage import UsageStore


@app.command("usage")
def usage(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user (default: every user).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show token usage: per user, per model, and the total.

    Example: chatctl usage --user alice --json
    """
    if user is not None:
        check_user(user)

    async def job(tools: Tools) -> dict[str, Any]:
        store = UsageStore(tools.redis, tools.keys, ttl_seconds=tools.settings.history_ttl_seconds)
        users = [user] if user is not None else sorted(await _users_with_usage(tools))
        return {name: (await store.totals(name)).as_dict() for name in users}

    per_user = run(job)
    total = {
        kind: sum(totals[kind] for totals in per_user.values())
        for kind in ("prompt_tokens", "completion_tokens", "turns")
    }

    def table() -> None:
        out = Table("user", "model", "turns", "prompt tokens", "completion tokens")
        for name, totals in per_user.items():
            for model, counts in sorted(totals["by_model"].items()):
                out.add_row(name, model, *(str(counts[k]) for k in ("turns", "prompt_tokens", "completion_tokens")))
        out.add_row("all", "", *(str(total[k]) for k in ("turns", "prompt_tokens", "completion_tokens")))
        Console(width=120).print(out)

    emit(as_json, {"users": per_user, "total": total}, table)


async def _users_with_usage(tools: Tools) -> set[str]:
    found: set[str] = set()
    async for batch in tools.maintenance().scan(tools.keys.usage_pattern(), "hash"):
        for key in batch:
            name = tools.keys.parse(key)
            if name is not None and name.kind == "usage" and name.user:
                found.add(name.user)
    return found
