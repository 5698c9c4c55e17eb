"""With no settings at all, the service runs on an embedded Redis and the offline demo model."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

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
