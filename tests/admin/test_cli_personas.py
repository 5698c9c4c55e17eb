"""`chatctl personas` on a real Redis, against personas made through the real service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from config import Settings
from tests.admin.test_cli import Chatctl
from tests.conftest import Service
from tests.servers import RedisProcess
from tests.test_identity import create_api_key
from tests.test_personas import PIRATE

USER = "alice"


@pytest.fixture
def chatctl(redis_server: RedisProcess, make_settings: Callable[..., Settings], tmp_path: Path) -> Chatctl:
    return Chatctl(redis_server.url, make_settings().redis_prefix, tmp_path)


def made_by_the_service(service: Service, count: int) -> list[str]:
    key = create_api_key(service, USER)
    with service.client(headers={"Authorization": f"Bearer {key}"}) as client:
        return [
            client.post("/roles", json={**PIRATE, "name": f"P{n}", "model": "fake-model"}).json()["key"]
            for n in range(count)
        ]


def test_list_export_delete_import_round_trip(
    chatctl: Chatctl, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    service = make_service()
    keys = made_by_the_service(service, 3)
    listed = chatctl.json("personas", "list", "--user", USER)
    assert [p["key"] for p in listed["personas"]] == keys and listed["total"] == 3
    assert "P0" in chatctl("personas", "list", "--user", USER).stdout

    exported = tmp_path / "alice.json"
    chatctl("personas", "export", "--user", USER, "-o", str(exported))
    document = orjson.loads(exported.read_bytes())
    assert document["format"] == "personachat-personas" and len(document["personas"]) == 3

    assert chatctl.json("personas", "delete", "--user", USER, keys[0], "--yes") == {
        "user": USER,
        "deleted": 1,
        "missing": [],
    }
    again = chatctl.json("personas", "import", str(exported), "--user", USER)
    assert again == {"user": USER, "imported": 1, "skipped_existing": 2, "skipped_full": 0}
    assert chatctl.json("personas", "list", "--user", USER)["personas"] == document["personas"]

    # Into another user: the same personas, usable there.
    assert chatctl.json("personas", "import", str(exported), "--user", "bob")["imported"] == 3
    bob = create_api_key(service, "bob")
    with service.client(headers={"Authorization": f"Bearer {bob}"}) as client:
        assert client.get(f"/roles/{keys[1]}").json()["name"] == "P1"

    assert chatctl.json("personas", "delete", "--user", USER, "--all", "--yes")["deleted"] == 3
    assert chatctl.json("personas", "list", "--user", USER)["total"] == 0


def test_import_respects_the_limit_and_refuses_bad_files(
    chatctl: Chatctl, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    made_by_the_service(make_service(), 3)
    exported = tmp_path / "alice.json"
    exported.write_text(chatctl("personas", "export", "--user", USER).stdout)
    chatctl.env["MAX_PERSONAS_PER_USER"] = "2"
    counts = chatctl.json("personas", "import", str(exported), "--user", "carol")
    assert (counts["imported"], counts["skipped_full"]) == (2, 1)

    bad = tmp_path / "bad.json"
    for content, problem in (
        ("{nope", "is not JSON"),
        ('{"format": "other"}', "not a personachat-personas document"),
        ('{"format": "personachat-personas", "version": 1, "personas": [{"key": "teacher"}]}', "invalid key"),
        (
            '{"format": "personachat-personas", "version": 1, "personas": '
            '[{"key": "u-0123456789ab", "name": "", "system_prompt": "p"}]}',
            "name",
        ),
    ):
        bad.write_text(content)
        result = chatctl("personas", "import", str(bad), "--user", "dave", code=1)
        assert problem in result.stderr
    assert chatctl.json("personas", "list", "--user", "dave")["total"] == 0
    assert (
        "not found: u-000000000000" in chatctl("personas", "delete", "-u", USER, "u-000000000000", "-y", code=1).stdout
    )
    chatctl("personas", "delete", "--user", USER, code=2)


def test_stats_count_persona_hashes_and_orphan_cleanup_leaves_them(
    chatctl: Chatctl, make_service: Callable[..., Service]
) -> None:
    made_by_the_service(make_service(), 2)
    stats = chatctl.json("stats")
    assert stats["by_kind"].get("personas") == 1 and "other" not in stats["by_kind"]
    chatctl("cleanup", "--orphans", "--yes")
    assert chatctl.json("personas", "list", "--user", USER)["total"] == 2
