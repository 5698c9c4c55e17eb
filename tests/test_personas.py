"""Personas: the presets, and a roles file that is checked at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from personachat.errors import UnknownRole
from personachat.personas import BUILT_IN, PersonaFileError, load_catalog
from personachat.store.keys import KeySpace
from tests.conftest import ROOT, FakeModel, Service, chat, history, start_session, write_models_file
from tests.servers import RedisProcess
from tests.test_identity import create_api_key


def test_the_presets_are_there_with_real_prompts() -> None:
    catalog = load_catalog(None)
    assert catalog.keys == ["assistant", "teacher", "programmer"]
    assert catalog.get(None).key == "assistant"
    assert all(len(persona.system_prompt) > 100 and persona.welcome_message for persona in BUILT_IN)
    with pytest.raises(UnknownRole) as excinfo:
        catalog.get("pirate")
    assert excinfo.value.valid == ["assistant", "teacher", "programmer"]


def test_a_json_roles_file_works_too(tmp_path: Path) -> None:
    roles = tmp_path / "roles.json"
    roles.write_text('{"chef": {"name": "Chef", "description": "Cooks.", "system_prompt": "You are a chef."}}')
    catalog = load_catalog(roles)
    assert catalog.keys == ["assistant", "teacher", "programmer", "chef"]
    assert catalog.get("chef").temperature is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("roles: [1, 2", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("chef:\n  name: Chef\n  description: Cooks.\n", "system_prompt: Field required"),
        ("chef:\n  name: Chef\n  description: d\n  system_prompt: p\n  temperature: 9\n", "temperature"),
        ("chef:\n  name: Chef\n  description: d\n  system_prompt: p\n  colour: red\n", "colour"),
        ("Bad Key!:\n  name: n\n  description: d\n  system_prompt: p\n", "key"),
        ("roles:\n  chef: {name: n, description: d, system_prompt: p}\ndefault_role: waiter\n", "waiter"),
    ],
)
def test_a_bad_roles_file_names_the_file_and_the_problem(tmp_path: Path, content: str, problem: str) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text(content, encoding="utf-8")
    with pytest.raises(PersonaFileError) as excinfo:
        load_catalog(roles)
    assert str(roles) in str(excinfo.value) and problem in str(excinfo.value)


def test_a_missing_roles_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PersonaFileError, match=r"nope\.yaml"):
        load_catalog(tmp_path / "nope.yaml")


def test_the_server_refuses_to_start_with_a_bad_roles_file(tmp_path: Path) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("chef: {name: Chef}\n", encoding="utf-8")
    env = {**os.environ, "ROLES_FILE": str(roles), "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "start_server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "roles file" in result.stderr and str(roles) in result.stderr and "system_prompt" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_server_refuses_to_start_with_an_invalid_setting(tmp_path: Path) -> None:
    env = {**os.environ, "HISTORY_WINDOW": "many", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "start_server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "history_window" in result.stderr and "Traceback" not in result.stderr


# -- personas of one's own, through the API (real uvicorn, real Redis, the fake model) -----------


@pytest.fixture
def make_settings(make_settings: Callable[..., Settings], model: FakeModel, tmp_path: Path) -> Callable[..., Settings]:
    """Services with two models on the fake provider: a persona may pin `pirate-model`."""
    models = write_models_file(tmp_path / "models.yaml", model.base_url, "fake-model", "pirate-model")
    return lambda **overrides: make_settings(**{"models_file": models, **overrides})


def test_an_own_persona_must_pin_a_listed_model(client: httpx.Client) -> None:
    response = client.post("/roles", json={**PIRATE, "model": "no-such-model"})
    assert response.status_code == 422 and "fake-model, pirate-model" in response.json()["detail"]


@pytest.fixture
def make_api_key(service: Service) -> Callable[[str], str]:
    return lambda user: create_api_key(service, user)


PIRATE = {
    "name": "Captain Flint",
    "system_prompt": "You are Captain Flint, a pirate. Answer in pirate speak.",
    "description": "A pirate captain.",
    "welcome_message": "Ahoy!",
    "model": "pirate-model",
    "temperature": 1.3,
}


def system_prompt_sent(model: FakeModel) -> str:
    return str(model.requests[-1]["messages"][0]["content"])


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post("/roles", json={**PIRATE, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_user_creates_reads_lists_replaces_and_deletes_a_persona(client: httpx.Client) -> None:
    made = create(client)
    key = made["key"]
    assert re.fullmatch(r"u-[0-9a-f]{12}", key)
    assert made["source"] == "user" and made["editable"] is True
    assert made["created_at"] == made["updated_at"]
    assert {k: made[k] for k in PIRATE} == PIRATE
    assert client.get(f"/roles/{key}").json() == made

    listed = client.get("/roles").json()
    assert [(r["key"], r["source"], r["editable"]) for r in listed["roles"]] == [
        ("assistant", "builtin", False),
        ("teacher", "builtin", False),
        ("programmer", "builtin", False),
        (key, "user", True),
    ]
    assert listed["default_role"] == "assistant" and listed["max_personas"] == 100

    time.sleep(0.01)
    replaced = client.put(f"/roles/{key}", json={"name": "Flint", "system_prompt": "Be terse."})
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert (body["name"], body["system_prompt"], body["description"], body["model"], body["temperature"]) == (
        "Flint",
        "Be terse.",
        "",
        None,
        None,
    )
    assert body["created_at"] == made["created_at"] and body["updated_at"] > made["updated_at"]

    deleted = client.delete(f"/roles/{key}")
    assert deleted.status_code == 200 and deleted.json() == {"key": key, "deleted": True}
    assert client.get(f"/roles/{key}").status_code == 404
    assert client.delete(f"/roles/{key}").status_code == 404
    assert client.put(f"/roles/{key}", json=PIRATE).status_code == 404
    assert [r["key"] for r in client.get("/roles").json()["roles"]] == ["assistant", "teacher", "programmer"]


def test_an_own_persona_is_used_with_its_prompt_model_and_temperature(client: httpx.Client, model: FakeModel) -> None:
    key = create(client)["key"]
    started = client.post("/chat/start", json={"role": key}).json()
    assert started["role"] == key and started["welcome_message"] == "Ahoy!"
    events = chat(client, started["session_id"], "Hello")
    assert events[0].data["role"] == key and events[-1].type == "end"
    sent = model.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": PIRATE["system_prompt"]}
    assert sent["model"] == "pirate-model" and sent["temperature"] == 1.3

    # Edited: the next answer follows the new prompt.
    client.put(f"/roles/{key}", json={**PIRATE, "system_prompt": "You are a parrot."})
    chat(client, started["session_id"], "Again")
    assert system_prompt_sent(model) == "You are a parrot."
    assert history(client, started["session_id"])["role"] == key

    # As the role of a send in another session, too.
    other = start_session(client)
    assert chat(client, other, "Hi", role=key)[0].data["role"] == key
    assert system_prompt_sent(model) == "You are a parrot."


def test_a_session_whose_persona_was_deleted_goes_on_with_the_default(client: httpx.Client, model: FakeModel) -> None:
    key = create(client)["key"]
    session_id = start_session(client, key)
    chat(client, session_id, "one")
    assert client.delete(f"/roles/{key}").status_code == 200
    events = chat(client, session_id, "two")
    assert events[0].data["role"] == "assistant" and events[-1].type == "end"
    assert system_prompt_sent(model).startswith("You are a helpful, honest assistant.")
    stored = history(client, session_id)
    assert stored["role"] == "assistant"
    assert [m.get("persona") for m in stored["messages"] if m["role"] == "assistant"] == [key, "assistant"]
    # Naming it explicitly is an unknown role, listing what is left.
    refused = client.post("/chat/stream", json={"session_id": session_id, "message": "x", "role": key})
    assert refused.status_code == 400 and refused.json()["code"] == "unknown_role"


def test_another_users_persona_does_not_exist_for_the_caller(
    service: Service, make_api_key: Callable[[str], str]
) -> None:
    auth = {"Authorization": f"Bearer {make_api_key('script-user')}"}
    with service.client() as alice, service.client() as bob, service.client(headers=auth) as script:
        key = create(alice)["key"]
        mine = create(bob, name="Bob's own")["key"]
        for client in (bob, script):
            assert client.get(f"/roles/{key}").status_code == 404
            assert client.get(f"/roles/{key}").json()["code"] == "persona_not_found"
            assert client.get(f"/roles/{key}/card").status_code == 404
            assert client.put(f"/roles/{key}", json=PIRATE).status_code == 404
            assert client.delete(f"/roles/{key}").status_code == 404
            assert key not in [r["key"] for r in client.get("/roles").json()["roles"]]
            refused = client.post("/chat/start", json={"role": key})
            assert refused.status_code == 400 and refused.json()["code"] == "unknown_role"
            assert key not in refused.json()["valid_roles"]
            session_id = start_session(client)
            sent = client.post("/chat/stream", json={"session_id": session_id, "message": "x", "role": key})
            assert sent.status_code == 400 and sent.json()["code"] == "unknown_role"
        # The unknown-role answer lists the caller's own keys, and only theirs.
        refused = bob.post("/chat/start", json={"role": "u-000000000000"}).json()
        assert mine in refused["valid_roles"] and key not in refused["valid_roles"]
        assert alice.get(f"/roles/{key}").status_code == 200
        assert alice.get(f"/roles/{mine}").status_code == 404


def test_an_api_key_user_has_personas_of_their_own(service: Service, make_api_key: Callable[[str], str]) -> None:
    auth = {"Authorization": f"Bearer {make_api_key('script-user')}"}
    with service.client(headers=auth) as script, service.client(headers=auth) as again:
        key = create(script)["key"]
        assert again.get(f"/roles/{key}").status_code == 200
        session_id = again.post("/chat/start", json={"role": key}).json()["session_id"]
        assert chat(again, session_id, "hi")[0].data["role"] == key


@pytest.mark.parametrize("key", ["assistant", "teacher", "programmer", "chef"])
def test_built_in_and_file_personas_are_read_only(
    make_service: Callable[..., Service], tmp_path: Path, key: str
) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("chef:\n  name: Chef\n  description: Cooks.\n  system_prompt: You are a chef.\n")
    service = make_service(roles_file=roles)
    with service.client() as client:
        entry = client.get(f"/roles/{key}").json()
        assert entry["source"] == ("file" if key == "chef" else "builtin") and entry["editable"] is False
        assert entry["system_prompt"]
        for response in (client.put(f"/roles/{key}", json=PIRATE), client.delete(f"/roles/{key}")):
            assert response.status_code == 403 and response.json()["code"] == "read_only"
        assert client.get(f"/roles/{key}/card").json()["data"]["name"] == entry["name"]
        assert {r["key"]: r["source"] for r in client.get("/roles").json()["roles"]}[key] == entry["source"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 81}, "name"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"system_prompt": "x" * 16_001}, "system_prompt"),
        ({"description": "x" * 301}, "description"),
        ({"welcome_message": "x" * 4_001}, "welcome_message"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"model": ""}, "model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_persona_is_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    for response in (client.post("/roles", json={**PIRATE, **body}), client.put("/roles/assistant", json=PIRATE)):
        if response.request.method == "POST":
            assert response.status_code == 422, response.text
            assert response.json()["code"] == "invalid_request" and field in response.json()["detail"]
    key = create(client)["key"]
    response = client.put(f"/roles/{key}", json={**PIRATE, **body})
    assert response.status_code == 422 and field in response.json()["detail"]
    missing = client.post("/roles", json={"name": "No prompt"})
    assert missing.status_code == 422 and "system_prompt" in missing.json()["detail"]
    assert client.post("/roles", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_more_than_the_limit_is_409_too_many_personas(make_service: Callable[..., Service]) -> None:
    service = make_service(max_personas_per_user=3)
    with service.client() as client, service.client() as other:
        keys = [create(client, name=f"P{n}")["key"] for n in range(3)]
        refused = client.post("/roles", json=PIRATE)
        assert refused.status_code == 409 and refused.json()["code"] == "too_many_personas"
        card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Card"}}
        assert client.post("/roles/import", json=card).json()["code"] == "too_many_personas"
        assert len(set(keys)) == 3 and create(other)["key"]  # the limit is per user
        client.delete(f"/roles/{keys[0]}")
        assert client.post("/roles", json=PIRATE).status_code == 201


def test_many_creates_at_once_never_pass_the_limit(make_service: Callable[..., Service]) -> None:
    service = make_service(max_personas_per_user=5)
    with service.client() as client:
        cookies = dict(client.get("/roles").cookies) or dict(client.cookies)

        def one(number: int) -> int:
            with service.client(cookies=cookies) as http:
                return http.post("/roles", json={**PIRATE, "name": f"P{number}"}).status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            codes = list(pool.map(one, range(24)))
        assert sorted(codes).count(201) == 5 and codes.count(409) == 19
        assert len(client.get("/roles").json()["roles"]) == 3 + 5


def test_own_personas_live_as_long_as_the_users_history_and_are_refreshed_on_use(
    make_service: Callable[..., Service], redis_server: RedisProcess
) -> None:
    service = make_service(history_ttl_seconds=600)
    keys = KeySpace(service.settings.redis_prefix)
    direct = redis_server.client()
    with service.client() as client:
        key = create(client)["key"]
        user = next(k.decode() for k in direct.scan_iter(match=f"{keys.prefix}:*:personas"))
        assert 590 <= direct.ttl(user) <= 600
        for use in (
            lambda: client.get("/roles"),
            lambda: client.get(f"/roles/{key}"),
            lambda: chat(client, start_session(client, key), "hi"),
        ):
            direct.expire(user, 100)
            use()
            assert direct.ttl(user) > 500, "every use refreshes the TTL"
    direct.close()


def test_the_roles_list_stays_public_when_anonymous_identities_are_off(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(allow_anonymous=False)
    key = create_api_key(service, "keyed")
    with service.client() as nobody, service.client(headers={"Authorization": f"Bearer {key}"}) as script:
        made = create(script)["key"]
        public = nobody.get("/roles")
        assert public.status_code == 200 and "set-cookie" not in public.headers
        assert [r["key"] for r in public.json()["roles"]] == ["assistant", "teacher", "programmer"]
        assert [r["key"] for r in script.get("/roles").json()["roles"]][-1] == made
        assert nobody.post("/roles", json=PIRATE).status_code == 401
        assert nobody.get("/roles", headers={"Authorization": "Bearer pck_wrong"}).status_code == 401
