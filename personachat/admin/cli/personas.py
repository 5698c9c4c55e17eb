"""`chatctl personas`: list, export, import and delete a user's own personas.

An export is a JSON document (`personachat-personas`, version 1) with the user's personas as
stored, keys and times included; importing it (into the same user or another) keeps the
keys, leaves a persona whose key the user already has as it is, and stops at the user's
MAX_PERSONAS_PER_USER. Every record is validated before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from personachat.admin.cli import personas_app
from personachat.admin.cli.common import (
    JsonOption,
    Tools,
    UserOption,
    YesOption,
    check_user,
    confirm,
    emit,
    fail,
    run,
)
from personachat.personas import OWN_KEY, PersonaDraft
from personachat.store.history import now_iso
from personachat.store.personas import PersonaStore

FORMAT = "personachat-personas"
VERSION = 1


def _store(tools: Tools) -> PersonaStore:
    return PersonaStore(tools.redis, tools.keys, ttl_seconds=tools.settings.history_ttl_seconds)


@personas_app.command("list")
def personas_list(user: UserOption, as_json: JsonOption = False) -> None:
    """List USER's own personas: key, name, description, last change.

    Example: chatctl personas list --user alice
    """
    check_user(user)

    async def job(tools: Tools) -> list[dict[str, Any]]:
        return await _store(tools).list(user)

    records = run(job)

    def table() -> None:
        out = Table("key", "name", "description", "updated")
        for record in records:
            out.add_row(record["key"], record["name"], record.get("description", ""), record.get("updated_at", ""))
        Console().print(out)

    emit(as_json, {"user": user, "personas": records, "total": len(records)}, table)


@personas_app.command("export")
def personas_export(
    user: UserOption,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")] = None,
) -> None:
    """Export USER's own personas as JSON (import it with `chatctl personas import`).

    Example: chatctl personas export --user alice > alice-personas.json
    """
    check_user(user)

    async def job(tools: Tools) -> list[dict[str, Any]]:
        return await _store(tools).list(user)

    records = run(job)
    document = {"format": FORMAT, "version": VERSION, "exported_at": now_iso(), "user": user, "personas": records}
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"exported {len(records)} personas of {user} to {output}", err=True)


@personas_app.command("import")
def personas_import(
    file: Annotated[str, typer.Argument(help="A JSON export (from `personas export`), or - for stdin.")],
    user: UserOption,
    as_json: JsonOption = False,
) -> None:
    """Import personas into USER; those whose key USER already has are left as they are.

    Example: chatctl personas import alice-personas.json --user alice
    """
    check_user(user)
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        document = orjson.loads(raw)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except orjson.JSONDecodeError as exc:
        fail(f"{file} is not JSON: {exc}")
    try:
        records = _validated(document)
    except ValueError as exc:
        fail(f"{file}: {exc}")

    async def job(tools: Tools) -> dict[str, int]:
        store, limit = _store(tools), tools.settings.max_personas_per_user
        counts = {"imported": 0, "skipped_existing": 0, "skipped_full": 0}
        for record in records:
            status = await store.create(user, record, limit)
            counts[{"ok": "imported", "exists": "skipped_existing", "full": "skipped_full"}[status]] += 1
        return counts

    counts = run(job)
    text = f"imported {counts['imported']} personas into {user}; {counts['skipped_existing']} already present"
    if counts["skipped_full"]:
        text += f"; {counts['skipped_full']} left out (the user has MAX_PERSONAS_PER_USER)"
    emit(as_json, {"user": user, **counts}, text)


@personas_app.command("delete")
def personas_delete(
    user: UserOption,
    keys: Annotated[list[str] | None, typer.Argument(help="Persona keys (see `personas list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every persona of USER.")] = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete some of USER's personas (by key), or all of them with --all.

    Example: chatctl personas delete --user alice u-3f2a9c1b7d4e
    """
    check_user(user)
    if bool(keys) == all_:
        fail("name the persona keys to delete, or --all (not both)", code=2)
    confirm(f"Delete {'every persona' if all_ else f'{len(keys or [])} personas'} of {user}?", yes)

    async def job(tools: Tools) -> dict[str, Any]:
        store = _store(tools)
        if all_:
            return {"deleted": await store.delete_all(user), "missing": []}
        missing = [key for key in keys or [] if not await store.delete(user, key)]
        return {"deleted": len(keys or []) - len(missing), "missing": missing}

    result = run(job)
    text = f"deleted {result['deleted']} personas of {user}"
    if result["missing"]:
        text += f"; not found: {', '.join(result['missing'])}"
    emit(as_json, {"user": user, **result}, text)
    if result["missing"]:
        raise typer.Exit(1)


def _validated(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document")
    if document.get("version") != VERSION:
        raise ValueError(f"unsupported version {document.get('version')!r}")
    items = document.get("personas")
    if not isinstance(items, list):
        raise ValueError("'personas' must be a list")
    records = []
    for number, item in enumerate(items, 1):
        where = f"persona #{number}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        key = item.get("key")
        if not isinstance(key, str) or not OWN_KEY.fullmatch(key):
            raise ValueError(f"{where}: invalid key {key!r}")
        fields = {name: item[name] for name in PersonaDraft.model_fields if name in item}
        try:
            draft = PersonaDraft(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{where}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        times = {name: str(item.get(name) or now_iso()) for name in ("created_at", "updated_at")}
        records.append({"key": key, **draft.model_dump(), **times})
    return records
