"""The README's client examples in `docs/examples/`, run as they are in the real browser
(Debian's Chromium, driven by Playwright) against the real service."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import ROOT, Service
from tests.web.test_cross_site import PageServer, cookie_of
from tests.web.test_page import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.browser

EXAMPLES = ROOT / "docs" / "examples"
EXAMPLE_API = 'const API = "http://127.0.0.1:8000";'


def example_page(name: str, service: Service) -> str:
    """The example as published, pointed at this test's service instead of port 8000."""
    page = Path(EXAMPLES / name).read_text(encoding="utf-8")
    assert page.count(EXAMPLE_API) == 1
    return page.replace(EXAMPLE_API, f"const API = {json.dumps(service.base_url)};")


PAGES = ["fetch-chat.html", "socket-chat.html"]  # by fetch (POST /chat/messages), by WebSocket (GET /chat/ws)


@pytest.mark.parametrize("name", PAGES)
def test_an_example_on_a_front_end_origin_chats_with_the_cookie(
    browser: Browser,  # noqa: F811
    make_service: Callable[..., Service],
    name: str,
) -> None:
    # A front end on another port of the same host, listed in CORS_ORIGINS (the identity
    # cookie is SameSite=Lax: the browser sends it to a front end of the same site).
    front = PageServer("127.0.0.1")
    service = make_service(cors_origins=[front.origin])
    front.pages["chat"] = example_page(name, service)
    front.start()
    context = browser.new_context(locale="en-US")
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        context.route("**/favicon.ico", lambda route: route.fulfill(status=204))  # the page names none
        page.goto(f"{front.origin}/chat")
        log = page.locator("#log")
        expect(log).to_contain_text("teacher: ")  # the session's welcome
        for text in ("What is a fraction?", "And a decimal?"):
            page.locator("#text").fill(text)
            page.locator("#text").press("Enter")
            expect(log).to_contain_text(f"you: {text}")
        expect(log).to_contain_text("Earlier messages in this conversation: **2**")  # the second answer remembers
        lines = log.inner_text().splitlines()
        assert not any(line.startswith("error:") for line in lines), lines
        assert errors == [], errors
        with httpx.Client(
            base_url=service.base_url, cookies={service.settings.cookie_name: cookie_of(context, service)}
        ) as api:
            sessions = api.get("/chat/sessions").json()["sessions"]  # the front end's identity, kept by the browser
            assert len(sessions) == 1 and sessions[0]["role"] == "teacher"
            stored = api.get("/chat/history", params={"session_id": sessions[0]["session_id"]}).json()
            assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [
                "What is a fraction?",
                "And a decimal?",
            ]
            assert all(f"teacher: {m['content']}" in log.inner_text() for m in stored["messages"][1::2])
    finally:
        context.close()
        front.stop()


@pytest.mark.parametrize("name", PAGES)
def test_an_example_on_an_origin_not_listed_gets_nothing(
    browser: Browser,  # noqa: F811
    make_service: Callable[..., Service],
    name: str,
) -> None:
    front, listed = PageServer("127.0.0.1"), PageServer("127.0.0.1")
    service = make_service(cors_origins=[listed.origin])
    front.pages["chat"] = example_page(name, service)
    front.start()
    context = browser.new_context(locale="en-US")
    try:
        page = context.new_page()
        # The service refuses the cross-origin POST (403 cross_site) and sends no CORS headers,
        # so the script's fetch of /chat/start fails and its module stops there.
        with page.expect_event("pageerror") as failure:
            page.goto(f"{front.origin}/chat")
        assert "Failed to fetch" in str(failure.value)
        assert page.locator("#log").inner_text() == ""
    finally:
        context.close()
        front.stop()
