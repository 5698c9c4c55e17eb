"""Other sites' pages in the real browser (Debian's Chromium, driven by Playwright).

A visitor uses the chat at 127.0.0.1:PORT; then, in the same browser, a page of another
origin tries to act with the visitor's cookie: from 127.0.0.2 (another site) and from
127.0.0.1 on another port (the same site, which SameSite=Lax does not protect against).
Each attack must change nothing: the visitor's cookie, sessions and history, checked
through the chat's own page afterwards. A front end listed in CORS_ORIGINS, on the other
hand, can use the API with the browser's cookie. And /docs renders under its CSP, offline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.conftest import Service
from tests.servers import ThreadedServer, free_port
from tests.web.test_page import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.browser


DONE = "attack-done"


class PageServer:
    """A tiny static server for pages of another origin: `pages[name]` is served at `/name`."""

    def __init__(self, host: str) -> None:
        self.pages: dict[str, str] = {}
        app = Starlette(routes=[Route("/{name}", self._page)])
        port = free_port()
        self.origin = f"http://{host}:{port}"
        self._server = ThreadedServer(app, host=host, port=port)

    async def _page(self, request: Request) -> Response:
        page = self.pages.get(request.path_params["name"])
        return HTMLResponse(page) if page is not None else Response(status_code=404)

    def start(self) -> PageServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="module", params=["127.0.0.2", "127.0.0.1"], ids=["cross-site", "same-site-other-port"])
def attacker(request: pytest.FixtureRequest) -> Iterator[PageServer]:
    server = PageServer(request.param).start()
    yield server
    server.stop()


def _script_page(script: str) -> str:
    # The attack's script, then a marker the test waits for (the title).
    return f'<!doctype html><title>attack</title><link rel="icon" href="data:,"><body><script>{script}</script></body>'


def attack_pages(target: str, session_id: str) -> dict[str, str]:
    send = f"{target}/chat/stream?session_id={session_id}&message="
    done = f"document.title = {json.dumps(DONE)};"
    return {
        "form": (
            f'<!doctype html><form method="POST" action="{target}/chat/start">'
            '<input name="role" value="teacher"></form><script>document.forms[0].submit()</script>'
        ),
        "navigate": _script_page(f"location.href = {json.dumps(send + 'sent-by-navigation')};"),
        "img": _script_page(
            "const img = new Image();"
            f"img.onload = img.onerror = () => {{ {done} }};"
            f"img.src = {json.dumps(send + 'sent-by-img')};"
            "document.body.append(img);"
        ),
        "eventsource": _script_page(
            f"const source = new EventSource({json.dumps(send + 'sent-by-eventsource')}, {{withCredentials: true}});"
            f"source.onerror = () => {{ source.close(); {done} }};"
            f"source.onmessage = () => {{ source.close(); {done} }};"
        ),
        "websocket": _script_page(
            f"const socket = new WebSocket({json.dumps(target.replace('http://', 'ws://') + '/chat/ws')});"
            "socket.onopen = () => {"
            f" socket.send(JSON.stringify({{type: 'stop', session_id: {json.dumps(session_id)}}}));"
            f" socket.send(JSON.stringify({{type: 'message', session_id: {json.dumps(session_id)},"
            " message: 'sent-by-websocket'}));"
            " setTimeout(() => socket.close(), 500);"
            "};"
            f"socket.onclose = () => {{ {done} }};"
        ),
        "stop": _script_page(
            f"fetch({json.dumps(f'{target}/chat/stop?session_id={session_id}')},"
            " {method: 'POST', mode: 'no-cors', credentials: 'include'})"
            f".finally(() => {{ {done} }});"
        ),
        "delete": _script_page(
            f"fetch({json.dumps(f'{target}/chat/sessions/{session_id}')},"
            " {method: 'DELETE', mode: 'no-cors', credentials: 'include'})"
            f".catch(() => null).finally(() => {{ {done} }});"
        ),
    }


def open_chat(browser: Browser, service: Service) -> tuple[BrowserContext, Page, list[str]]:  # noqa: F811
    context = browser.new_context(base_url=service.base_url, locale="en-US")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return context, page, errors


def cookie_of(context: BrowserContext, service: Service) -> str:
    values = [c["value"] for c in context.cookies(service.base_url) if c["name"] == service.settings.cookie_name]
    assert len(values) == 1, values
    return values[0]


def state_seen_by_the_page(page: Page) -> dict[str, Any]:
    """The visitor's sessions and histories, as the chat's own page reads them."""
    result: dict[str, Any] = page.evaluate(
        """async () => {
            const sessions = await (await fetch("/chat/sessions")).json();
            const histories = {};
            for (const s of sessions.sessions) {
                const h = await (await fetch(`/chat/history?session_id=${s.session_id}`)).json();
                histories[s.session_id] = h.messages.map(m => [m.role, m.content, !!m.stopped]);
            }
            return {sessions: sessions.sessions.map(s => s.session_id), histories};
        }"""
    )
    return result


def test_pages_of_other_origins_change_nothing(
    browser: Browser,  # noqa: F811
    make_service: Callable[..., Service],
    attacker: PageServer,
) -> None:
    service = make_service()
    context, page, errors = open_chat(browser, service)
    try:
        page.locator("#composer-input").fill("my own message")
        page.locator("#composer-input").press("Enter")
        answers = page.locator(".message-assistant:not(.message-welcome)")
        expect(answers).to_have_count(1)
        expect(answers.first).not_to_have_class("message message-assistant is-streaming")
        expect(page.locator(".session")).to_have_count(1)
        cookie = cookie_of(context, service)
        with httpx.Client(base_url=service.base_url, cookies={service.settings.cookie_name: cookie}) as api:
            session_id = api.get("/chat/sessions").json()["sessions"][0]["session_id"]
            # A long answer runs while the pages try to stop it (about 3 s).
            running = _background_turn(api, session_id, "[[chunks=60]] [[delay_ms=50]] a long answer")
            attacker.pages = attack_pages(service.base_url, session_id)
            for name in ("stop", "websocket", "form", "navigate", "img", "eventsource", "delete"):
                hostile = context.new_page()
                hostile.goto(f"{attacker.origin}/{name}")
                if name in ("form", "navigate"):
                    hostile.wait_for_url(f"{service.base_url}/**")
                    hostile.wait_for_load_state()
                else:
                    expect(hostile).to_have_title(DONE)
                assert cookie_of(context, service) == cookie, f"{name} replaced the visitor's cookie"
                if name in ("form", "navigate"):
                    assert '"code":"cross_site"' in hostile.content(), name
                hostile.close()
            running.join(timeout=30)
            assert not running.is_alive()
        after = state_seen_by_the_page(page)
        before = {"sessions": [session_id], "histories": {session_id: after["histories"].get(session_id)}}
        assert after == before
        messages = after["histories"][session_id]
        assert [m[:1] for m in messages] == [["user"], ["assistant"], ["user"], ["assistant"]]
        assert messages[2][1] == "[[chunks=60]] [[delay_ms=50]] a long answer"
        assert messages[3][2] is False, "the answer was stopped by the other page"
        assert not any("sent-by" in m[1] for m in messages)
        page.reload()
        expect(page.locator(".session")).to_have_count(1)
        assert errors == [], errors
    finally:
        context.close()


def _background_turn(api: httpx.Client, session_id: str, message: str) -> threading.Thread:
    started = threading.Event()

    def run() -> None:
        body = {"session_id": session_id, "message": message}
        with api.stream("POST", "/chat/stream", json=body, timeout=30) as response:
            assert response.status_code == 200
            started.set()
            for _ in response.iter_lines():
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(timeout=10)
    time.sleep(0.2)  # the turn is running
    return thread


def test_a_front_end_listed_in_cors_origins_can_use_the_api_with_the_cookie(
    browser: Browser,  # noqa: F811
    make_service: Callable[..., Service],
) -> None:
    # A front end on another port of the same host (a dev server, or app.example.com for
    # api.example.com): the browser keeps and sends the SameSite=Lax cookie for it.
    front = PageServer("127.0.0.1")
    service = make_service(cors_origins=[front.origin])
    front.pages["app"] = _script_page(
        f"""
        (async () => {{
            const api = {json.dumps(service.base_url)};
            const started = await fetch(api + "/chat/start", {{
                method: "POST", credentials: "include",
                headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{role: "teacher"}}),
            }});
            const session = await started.json();
            const stream = await fetch(api + "/chat/stream", {{
                method: "POST", credentials: "include",
                headers: {{"Content-Type": "application/json"}},
                body: JSON.stringify({{session_id: session.session_id, message: "hello from the front end"}}),
            }});
            const text = await stream.text();
            const sessions = await (await fetch(api + "/chat/sessions", {{credentials: "include"}})).json();
            window.result = {{status: started.status, ended: text.includes('"type":"end"'), sessions: sessions.total,
                              requestId: started.headers.get("X-Request-ID")}};
            document.title = {json.dumps(DONE)};
        }})();
        """
    )
    front.start()
    context = browser.new_context(locale="en-US")
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{front.origin}/app")
        expect(page).to_have_title(DONE)
        result = page.evaluate("window.result")
        assert result["status"] == 200 and result["ended"] is True and result["sessions"] == 1
        assert result["requestId"]  # exposed to the front end
        assert errors == []
        cookie = cookie_of(context, service)
        with httpx.Client(base_url=service.base_url, cookies={service.settings.cookie_name: cookie}) as api:
            assert api.get("/chat/sessions").json()["total"] == 1  # the same identity as the front end's
            session_id = api.get("/chat/sessions").json()["sessions"][0]["session_id"]
            assert api.get("/chat/history", params={"session_id": session_id}).json()["total"] == 2
    finally:
        context.close()
        front.stop()


def test_docs_render_offline_under_their_csp_with_no_console_error(
    browser: Browser,  # noqa: F811
    service: Service,
) -> None:
    context = browser.new_context(base_url=service.base_url, locale="en-US")
    context.set_default_timeout(10_000)
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(service.base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)  # offline: nothing but this server answers
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.goto("/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Persona chat")
        expect(page.locator(".opblock-summary-path", has_text="/chat/start").first).to_be_visible()
        page.locator(".opblock-summary-path", has_text="/healthz").first.click()
        page.get_by_role("button", name="Try it out").click()
        page.get_by_role("button", name="Execute").click()
        expect(page.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("200")
        assert outside == []
        assert errors == [], errors
    finally:
        context.close()
