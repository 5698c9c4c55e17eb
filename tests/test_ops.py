"""REST for scripts (delete all sessions, Markdown export) and operations (metrics, logs)."""

from __future__ import annotations

import httpx

from tests.conftest import Service, chat, history, start_session
from tests.sse import iter_events

SLOW = "[[chunks=200]] [[delay_ms=25]]"  # a five-second answer, to have a turn running


def test_delete_all_sessions_skips_the_running_one_and_reports_it(service: Service) -> None:
    with service.client() as alice, service.client() as bob:
        idle = [start_session(alice) for _ in range(3)]
        chat(alice, idle[0], "hello")
        busy = start_session(alice)
        bobs = start_session(bob)
        with alice.stream("POST", "/chat/stream", json={"session_id": busy, "message": SLOW}) as stream:
            assert next(iter_events(stream)).type == "start"
            response = alice.delete("/chat/sessions")
            assert response.status_code == 200
            assert response.json() == {"deleted": 3, "skipped_running": [busy]}
            assert alice.post("/chat/stop", params={"session_id": busy}).status_code == 200
        listed = alice.get("/chat/sessions").json()
        assert [s["session_id"] for s in listed["sessions"]] == [busy]
        for session_id in idle:
            assert alice.get("/chat/history", params={"session_id": session_id}).status_code == 404
        assert history(bob, bobs)["session_id"] == bobs  # another user's session is untouched

        assert alice.delete("/chat/sessions").json() == {"deleted": 1, "skipped_running": []}
        assert alice.get("/chat/sessions").json()["total"] == 0
        assert alice.delete("/chat/sessions").json() == {"deleted": 0, "skipped_running": []}


def test_history_as_markdown(client: httpx.Client) -> None:
    session_id = start_session(client, "teacher", title="Fractions")
    chat(client, session_id, "What is 1/2 + 1/4?")
    response = client.get("/chat/history", params={"session_id": session_id, "format": "markdown"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    text = response.text
    assert text.startswith("# Fractions\n")
    assert f"- Session: `{session_id}`" in text and "- Persona: teacher" in text
    user_at = text.index("## User · ")
    assert text.index("What is 1/2 + 1/4?") > user_at
    assert text.index("## Assistant (teacher) · ") > user_at

    assert client.get("/chat/history", params={"session_id": session_id, "format": "json"}).json()["total"] == 2
    bad = client.get("/chat/history", params={"session_id": session_id, "format": "html"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    with httpx.Client(base_url=str(client.base_url)) as stranger:
        foreign = stranger.get("/chat/history", params={"session_id": session_id, "format": "markdown"})
        assert foreign.status_code == 404


def test_openapi_documents_the_script_endpoints(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "skipped_running" in paths["/chat/sessions"]["delete"]["description"]
    history_get = paths["/chat/history"]["get"]
    assert "text/markdown" in history_get["responses"]["200"]["content"]
    assert any(p["name"] == "format" for p in history_get["parameters"])
