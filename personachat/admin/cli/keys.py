"""`chatctl keys`: create, list and revoke API keys."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from personachat.admin.cli import keys_app
from personachat.admin.cli.common import JsonOption, Tools, UserOption, check_user, emit, fail, run
from personachat.store.api_keys import ApiKeyStore

T = TypeVar("T")
DAY_MS = 86_400_000


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
    check_user(user)

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
