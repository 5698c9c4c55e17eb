"""Personas: the presets, and a roles file that is checked at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from personachat.errors import UnknownRole
from personachat.personas import BUILT_IN, PersonaFileError, load_catalog
from tests.conftest import ROOT


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
