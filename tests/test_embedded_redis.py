"""With no settings at all, the service runs on an embedded Redis and the offline demo model."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config import Settings
from personachat.embedded_redis import EmbeddedRedis
from tests.conftest import ROOT, chat, history, start_session
from tests.servers import ServiceProcess
from tests.sse import answer_text

NO_SETTINGS = {"REDIS_URL": "", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "SECRET_KEY": "", "LOG_LEVEL": "warning"}


@pytest.mark.slow
def test_with_no_settings_it_chats_with_the_demo_model_and_history_survives_a_restart(tmp_path: Path) -> None:
    env = {**NO_SETTINGS, "DATA_DIR": str(tmp_path)}
    service = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=service.base_url, timeout=30) as client:
            assert client.get("/roles").json()["demo_model"] is True
            session_id = start_session(client, "teacher")
            chat(client, session_id, "first message")
            events = chat(client, session_id, "second message")
            text = answer_text(events)
            assert "Offline demo model" in text and "patient, encouraging teacher" in text
            assert "Earlier messages in this conversation: **2**" in text  # it remembers
            cookies = client.cookies
        service.signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        service.stop()
    socket = tmp_path / "redis" / "redis.sock"
    assert not socket.exists()  # the embedded Redis was stopped with the service
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0  # the generated key is private
    assert list((tmp_path / "redis").glob("appendonly*"))  # history is kept in an append-only file

    again = ServiceProcess(env, ROOT).start()
    try:
        with httpx.Client(base_url=again.base_url, cookies=cookies, timeout=30) as client:
            stored = history(client, session_id)  # same secret key, same identity, same data
            assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [
                "first message",
                "second message",
            ]
    finally:
        again.stop()


def _modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)) or ".": path.stat().st_mode & 0o777 for path in [root, *root.rglob("*")]}


def test_data_dir_folders_and_files_are_private_from_the_first_byte(tmp_path: Path) -> None:
    # Under the most permissive umask, and with a DATA_DIR an older version made 0755: no
    # folder of DATA_DIR is open to other users, no file readable by them.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    old_umask = os.umask(0)
    try:
        key = Settings(_env_file=None, data_dir=data_dir).resolved_secret_key()  # type: ignore[call-arg]
        embedded = EmbeddedRedis(data_dir)
        embedded.start()
        try:
            client = redis.Redis(unix_socket_path=str(embedded.socket))
            client.set("chat-text", "a private message")
            client.bgrewriteaof()
            deadline = time.monotonic() + 10
            while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
                time.sleep(0.05)
            client.close()
            modes = _modes(data_dir)
        finally:
            embedded.stop()
    finally:
        os.umask(old_umask)
    assert key
    assert list((data_dir / "redis").rglob("appendonly*")), modes
    folders = {name: mode for name, mode in modes.items() if (data_dir / name).is_dir()}
    files = {name: mode for name, mode in modes.items() if name not in folders}
    assert set(folders.values()) == {0o700}, folders
    assert all(mode & 0o077 == 0 for mode in files.values()), files  # the socket is 0700, the rest 0600


def test_the_secret_key_file_is_created_private_not_chmodded_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[int] = []
    real_link = os.link

    def link(source: str | Path, target: str | Path) -> None:
        created.append(os.stat(source).st_mode & 0o777)
        real_link(source, target)

    def no_chmod(self: Path, mode: int, **kwargs: Any) -> None:
        raise AssertionError(f"chmod({self}, {mode:o}): the file was not private from its creation")

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        Settings(_env_file=None, data_dir=tmp_path / "fresh").resolved_secret_key()  # type: ignore[call-arg]
    finally:
        os.umask(old_umask)
    assert created == [0o600]
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "fresh" / "secret_key").stat().st_mode & 0o777 == 0o600
