"""The chat page in a real browser: Debian's Chromium, headless, driven by Playwright, against
the real service (uvicorn, Redis) and a fake model.

Every test also checks that the page logged no console error, threw no exception and opened
no dialog (an `alert()` from injected markup would be one). Screenshots of the main view go to
test-output/ (and, with UPDATE_SCREENSHOTS=1, to docs/ for the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from personachat.demo_model import DemoModel
from tests.conftest import ROOT, Service
from tests.servers import ThreadedServer

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev requirements install it
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
OUTPUT = ROOT / "test-output"
DOCS = ROOT / "docs"

ANSWERS = ".message-assistant:not(.message-welcome)"
STREAMING = re.compile(r"\bis-streaming\b")

# -- a fake model with richer answers than the demo's ------------------------------------------

RICH_PROMPT = "How do I read a file line by line in Python?"
RICH_ANSWER = """Here are three common ways, from the most to the least memory-friendly:

1. **Iterate over the file**: it reads one line at a time, so it works for huge files.
2. `readlines()`: reads every line into a list at once.
3. `Path.read_text().splitlines()`: the shortest, fine for small files.

```python
from pathlib import Path

def numbered_lines(path: Path) -> None:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            print(f"{number:>4}  {line.rstrip()}")
```

| method | memory | best for |
| --- | --- | --- |
| `for line in file` | one line | big files, logs |
| `readlines()` | whole file | small files |

See [the Python tutorial](https://docs.python.org/3/tutorial/inputoutput.html) for more."""
RICH_CODE_FIRST_LINE = "from pathlib import Path"

EVIL_ANSWER = """Some **markup** a model might send:

<img src=x onerror="window.__xss = 'img'"> <script>window.__xss = 'script'</script>

<iframe src="javascript:window.__xss='iframe'"></iframe>

[click me](javascript:window.__xss='link') and ![pixel](https://example.com/pixel.png)
<a href="https://example.com" onclick="window.__xss='onclick'">a site</a>"""


class RichModel(DemoModel):
    """The demo model, plus: a Markdown-rich answer to RICH_PROMPT, a hostile one to
    `[[evil]]`, and `[[fail_once]]` (HTTP 500 the first time a message is seen)."""

    def __init__(self) -> None:
        super().__init__(record=False, directives=True)
        self.failed: set[str] = set()

    async def _completions(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        last = next(str(m["content"]) for m in reversed(body["messages"]) if m.get("role") == "user")
        delay = float(m.group(1)) / 1000 if (m := re.search(r"\[\[delay_ms=(\d+)\]\]", last)) else 0.012
        if RICH_PROMPT in last:
            return _text_stream(RICH_ANSWER, delay)
        if "[[evil]]" in last:
            return _text_stream(EVIL_ANSWER, delay)
        if "[[fail_once]]" in last and last not in self.failed:
            self.failed.add(last)
            error = {"message": "fault: try again", "type": "server_error", "code": None}
            return JSONResponse({"error": error}, status_code=500)
        return await super()._completions(request)


def _text_stream(text: str, delay: float) -> StreamingResponse:
    pieces = re.findall(r".{1,7}", text, flags=re.S)

    async def events() -> AsyncIterator[bytes]:
        head = {"id": "chatcmpl-rich", "object": "chat.completion.chunk", "created": int(time.time()), "model": "rich"}
        for piece in pieces:
            await asyncio.sleep(delay)
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        done = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = None
    if sync_playwright is None:
        problem = "the playwright package is not installed (pip install -r requirements-dev.txt)"
    elif not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium; scripts/test does it)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run: {problem}")
        pytest.skip(f"browser tests skipped: {problem}")
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def rich_model() -> Iterator[str]:
    server = ThreadedServer(RichModel().app).start()
    yield server.base_url + "/v1"
    server.stop()


@pytest.fixture
def rich_service(make_service: Callable[..., Service], rich_model: str) -> Service:
    return make_service(openai_base_url=rich_model)


@dataclass
class Tab:
    """A page of the chat, with what it logged: console errors, uncaught exceptions, dialogs."""

    page: Page
    service: Service
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def open(self) -> Tab:
        self.page.goto("/")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        return self

    def reload(self) -> None:
        self.page.reload()
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    def on_console(self, kind: str, text: str) -> None:
        if kind == "error" and not any(pattern.search(text) for pattern in self.allowed):
            self.errors.append(f"console.{kind}: {text}")

    def assert_clean(self) -> None:
        assert self.errors == [], "the page logged errors"
        assert self.dialogs == [], "the page opened a dialog"

    @property
    def answers(self) -> Locator:
        return self.page.locator(ANSWERS)

    @property
    def input(self) -> Locator:
        return self.page.locator("#composer-input")

    def send(self, text: str) -> None:
        self.input.fill(text)
        self.input.press("Enter")

    def chat(self, text: str, *, done: bool = True) -> Locator:
        """Send `text` and return its answer (once it has ended, unless done=False)."""
        before = self.answers.count()
        self.send(text)
        expect(self.answers).to_have_count(before + 1)
        answer = self.answers.nth(before)
        if done:
            expect(answer).not_to_have_class(STREAMING)
        return answer

    def cookies(self) -> dict[str, str]:
        return {cookie["name"]: cookie["value"] for cookie in self.page.context.cookies()}

    def api(self) -> httpx.Client:
        """An HTTP client with this browser's identity (its cookie)."""
        return httpx.Client(base_url=self.service.base_url, cookies=self.cookies(), timeout=30)


@pytest.fixture
def open_tab(browser: Browser, make_service: Callable[..., Service]) -> Iterator[Callable[..., Tab]]:
    # Depends on make_service so that the pages close before the servers stop (a page whose
    # server went away would log failed requests).
    tabs: list[Tab] = []

    def open_(service: Service, *, viewport: dict[str, int] | None = None, **options: Any) -> Tab:
        options.setdefault("locale", "en-US")
        context = browser.new_context(viewport=viewport or DESKTOP, base_url=service.base_url, **options)
        context.set_default_timeout(10_000)
        page = context.new_page()
        tab = Tab(page, service)
        page.on("console", lambda message: tab.on_console(message.type, message.text))
        page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
        page.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
        tabs.append(tab)
        return tab.open()

    yield open_
    for tab in tabs:
        tab.page.context.close()
    for tab in tabs:
        tab.assert_clean()


def screenshot(page: Page, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and name.startswith("screenshot-"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / f"{name}.png")


def seed_chats(tab: Tab) -> None:
    """A few earlier chats in the sidebar, made through the API with the page's identity."""
    with tab.api() as client:
        for role, message in (
            ("assistant", "Plan a 3-day trip to Kyoto"),
            ("teacher", "Explain photosynthesis simply"),
        ):
            session_id = client.post("/chat/start", json={"role": role}).json()["session_id"]
            client.post("/chat/stream", json={"session_id": session_id, "message": message}).read()


# -- sending and reading answers ---------------------------------------------------------------


def test_a_message_streams_in_as_rendered_markdown_with_highlighted_copyable_code(
    open_tab: Callable[..., Tab], rich_service: Service
) -> None:
    tab = open_tab(rich_service)
    page = tab.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    seed_chats(tab)
    tab.reload()
    page.locator(".persona-card", has_text="Programmer").click()
    expect(tab.input).to_be_focused()

    answer = tab.chat(RICH_PROMPT, done=False)
    # While it streams: Stop replaces Send, and Enter does not send another message.
    expect(page.locator("#stop-button")).to_be_visible()
    expect(answer.locator("ol")).to_be_visible()
    tab.input.fill("a second message")
    tab.input.press("Enter")
    expect(page.locator(".message-user")).to_have_count(1)
    expect(tab.input).to_have_value("a second message")
    expect(answer).not_to_have_class(STREAMING)
    tab.input.fill("")

    expect(answer.locator(".persona-name")).to_have_text("Programmer")
    expect(answer.locator("ol > li")).to_have_count(3)
    expect(answer.locator("ol strong")).to_have_text("Iterate over the file")
    code = answer.locator(".code-block code")
    expect(code).to_contain_text(RICH_CODE_FIRST_LINE)
    expect(answer.locator(".code-block .code-lang")).to_have_text("python")
    assert code.locator(".hljs-keyword").count() >= 3, "the code is highlighted"
    expect(answer.locator(".table-wrap table tr")).to_have_count(3)
    link = answer.get_by_role("link", name="the Python tutorial")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # The answer was read out politely to screen readers, once.
    announcer = page.locator("#announcer[aria-live=polite]")
    expect(announcer).to_contain_text("Here are three common ways")
    expect(announcer).to_contain_text("See the Python tutorial for more.")

    # The chat appears in the sidebar, titled by its first message, as the current one.
    current = page.locator(".session[aria-current]")
    expect(current.locator(".session-title")).to_have_text(RICH_PROMPT)
    expect(page.locator(".session")).to_have_count(3)
    page.mouse.move(0, 0)
    page.locator("#toast").evaluate("toast => { toast.hidden = true; }")  # the "wait for the answer" notice
    page.locator(".message-user").evaluate("row => row.scrollIntoView({ block: 'start' })")
    screenshot(page, "screenshot-desktop")

    answer.locator(".code-block button", has_text="Copy").click()
    expect(answer.locator(".code-block button")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(RICH_CODE_FIRST_LINE) and copied.rstrip().endswith(
        'print(f"{number:>4}  {line.rstrip()}")'
    )

    with tab.api() as client:
        stored = client.get("/chat/sessions").json()["sessions"]
    assert len(stored) == 3
    tab.assert_clean()


def test_enter_sends_shift_enter_adds_a_line_and_empty_input_cannot_be_sent(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    page = tab.page
    send = page.locator("#send-button")
    expect(send).to_be_disabled()
    tab.input.fill("   \n  ")
    expect(send).to_be_disabled()
    tab.input.press("Enter")
    tab.input.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator(".message")).to_have_count(0)
    expect(tab.input).to_have_value("first line\nsecond line")
    expect(send).to_be_enabled()
    page.keyboard.press("Enter")
    expect(page.locator(".message-user .user-text")).to_have_text("first line\nsecond line")
    expect(tab.input).to_have_value("")
    expect(tab.answers.first).not_to_have_class(STREAMING)
    # The send button works too, for those who prefer the mouse.
    tab.input.fill("by button")
    send.click()
    expect(page.locator(".message-user")).to_have_count(2)
    expect(tab.answers.nth(1)).to_contain_text("Earlier messages in this conversation: 2")

    # A message too long for a URL goes by POST; one longer than the limit is refused kindly.
    long = "word " * 1500
    answer = tab.chat(long)
    expect(answer).to_contain_text("You said: “word word word")
    expect(page.locator(".message-user .user-text").last).to_have_text(long)
    tab.allowed.append(re.compile("status of 413"))
    too_long = tab.chat("x" * (service.settings.max_message_chars + 1))
    expect(too_long.locator(".error-box")).to_contain_text("Your message is too long")
    expect(tab.input).to_have_value("x" * (service.settings.max_message_chars + 1))
    tab.assert_clean()


def test_a_fast_long_answer_is_rendered_once_per_frame_not_once_per_chunk(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    answer = tab.chat("[[chunks=1500]] fast")
    words = answer.locator(".markdown").inner_text().split()
    assert words == [f"w{index}" for index in range(1500)]
    renders = int(answer.get_attribute("data-renders") or 0)
    assert 1 <= renders < 1500 / 10, renders
    tab.assert_clean()


def test_switching_persona_changes_the_next_answer_and_a_reload_keeps_the_chat(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    page = tab.page
    cards = page.locator(".persona-card")
    expect(cards).to_have_count(3)
    expect(cards.filter(has_text="Teacher")).to_contain_text("A patient teacher")
    expect(page.locator("#persona-description")).to_contain_text("A helpful general assistant")

    first = tab.chat("Hello there")
    expect(first).to_contain_text("You are a helpful, honest assistant.")
    expect(first.locator(".persona-name")).to_have_text("Assistant")

    page.locator("#persona-select").select_option("teacher")
    expect(page.locator("#persona-description")).to_contain_text("A patient teacher")
    expect(tab.input).to_have_attribute("placeholder", "Message Teacher…")
    second = tab.chat("What is a fraction?")
    expect(second).to_contain_text("You are a patient, encouraging teacher.")
    expect(second.locator(".persona-name")).to_have_text("Teacher")
    expect(second).to_contain_text("Earlier messages in this conversation: 2")

    tab.reload()
    expect(page.locator(".message-user .user-text")).to_have_text(["Hello there", "What is a fraction?"])
    expect(tab.answers).to_have_count(2)
    expect(tab.answers.nth(0).locator(".persona-name")).to_have_text("Assistant")
    expect(tab.answers.nth(1).locator(".persona-name")).to_have_text("Teacher")
    expect(tab.answers.nth(1)).to_contain_text("You are a patient, encouraging teacher.")
    expect(page.locator("#persona-select")).to_have_value("teacher")
    expect(page.locator("#chat-title")).to_have_text("Hello there")
    third = tab.chat("And a decimal?")
    expect(third).to_contain_text("You are a patient, encouraging teacher.")
    expect(third).to_contain_text("Earlier messages in this conversation: 4")
    tab.assert_clean()


def test_sessions_can_be_switched_and_deleted_with_confirmation(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    expect(page.locator("#sessions-empty")).to_be_visible()
    tab.chat("First chat about apples")
    page.locator("#new-chat").click()
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#welcome")).to_be_visible()
    tab.chat("Second chat about pears")
    sessions = page.locator(".session")
    expect(sessions.locator(".session-title")).to_have_text(["Second chat about pears", "First chat about apples"])
    expect(sessions.first).to_have_attribute("aria-current", "page")
    expect(sessions.first.locator(".session-meta")).to_contain_text("Assistant · just now")

    sessions.filter(has_text="apples").locator(".session-open").click()
    expect(page.locator(".message-user .user-text")).to_have_text(["First chat about apples"])
    expect(page.locator("#chat-title")).to_have_text("First chat about apples")
    expect(sessions.filter(has_text="apples")).to_have_attribute("aria-current", "page")

    # Delete asks first; Cancel keeps the chat.
    sessions.filter(has_text="pears").locator(".session-delete").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("“Second chat about pears” and all its messages will be deleted.")
    page.locator("#confirm-cancel").click()
    expect(dialog).to_be_hidden()
    expect(sessions).to_have_count(2)
    sessions.filter(has_text="pears").locator(".session-delete").click()
    page.locator("#confirm-ok").click()
    expect(sessions).to_have_count(1)
    expect(page.locator("#toast")).to_have_text("Chat deleted.")
    with tab.api() as client:
        assert [s["title"] for s in client.get("/chat/sessions").json()["sessions"]] == ["First chat about apples"]

    # Deleting the open chat (here with the keyboard) leaves a fresh new chat.
    sessions.first.locator(".session-delete").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.locator("#confirm-ok").focus()
    page.keyboard.press("Enter")
    expect(sessions).to_have_count(0)
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator(".message")).to_have_count(0)
    tab.reload()
    expect(page.locator(".message")).to_have_count(0)
    tab.assert_clean()


def test_clear_empties_the_current_chat_but_keeps_it(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    tab.chat("Remember the number 42")
    page.locator("#clear-button").click()
    expect(page.locator("#confirm-title")).to_have_text("Clear this chat?")
    page.locator("#confirm-ok").click()
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#clear-button")).to_be_hidden()
    expect(page.locator(".session")).to_have_count(1)
    session_id = page.evaluate("localStorage.getItem('personachat.session')")
    with tab.api() as client:
        assert client.get("/chat/history", params={"session_id": session_id}).json()["messages"] == []
    answer = tab.chat("What number?")
    expect(answer).to_contain_text("Earlier messages in this conversation: 0")
    tab.assert_clean()


def test_stop_ends_the_answer_and_marks_it_stopped(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    answer = tab.chat("[[delay_ms=50]] [[chunks=300]] go slowly", done=False)
    expect(answer).to_contain_text(re.compile(r"\bw5\b"))
    page.locator("#stop-button").click()
    expect(answer).not_to_have_class(STREAMING)
    expect(answer.locator(".tag")).to_have_text("Stopped")
    expect(page.locator("#send-button")).to_be_visible()
    text = answer.locator(".markdown").inner_text()
    assert "w5" in text and "w299" not in text
    expect(page.locator("#announcer")).to_contain_text("The answer was stopped.")

    # Esc in the message box stops too.
    second = tab.chat("[[delay_ms=50]] [[chunks=300]] again", done=False)
    expect(second).to_contain_text(re.compile(r"\bw3\b"))
    tab.input.press("Escape")
    expect(second.locator(".tag")).to_have_text("Stopped")

    tab.reload()
    expect(tab.answers.locator(".tag")).to_have_text(["Stopped", "Stopped"])
    tab.assert_clean()


def test_reload_during_an_answer_resumes_it_without_duplicates(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    answer = tab.chat("[[delay_ms=30]] [[chunks=80]] long one", done=False)
    expect(answer).to_contain_text(re.compile(r"\bw3\b"))
    tab.reload()
    expect(page.locator(".message-user .user-text")).to_have_text(["[[delay_ms=30]] [[chunks=80]] long one"])
    expect(tab.answers).to_have_count(1)
    expect(page.locator("#stop-button")).to_be_visible()
    expect(tab.answers.first).not_to_have_class(STREAMING)
    text = tab.answers.first.locator(".markdown").inner_text()
    assert text.split() == [f"w{index}" for index in range(80)]
    tab.reload()
    assert tab.answers.first.locator(".markdown").inner_text().split() == [f"w{index}" for index in range(80)]
    tab.assert_clean()


def test_auto_scroll_follows_the_answer_until_the_reader_scrolls_up(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service, viewport={"width": 700, "height": 480})
    page = tab.page
    scroller = page.locator("#conversation")

    def distance_to_end() -> float:
        return float(scroller.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight"))

    answer = tab.chat("[[delay_ms=6]] [[chunks=700]] a long answer", done=False)
    page.wait_for_function("el => el.scrollHeight > el.clientHeight + 300", arg=scroller.element_handle())
    assert distance_to_end() < 60, "it follows the answer"

    page.mouse.move(350, 200)
    page.mouse.wheel(0, -250)
    page.wait_for_timeout(150)
    top = scroller.evaluate("el => el.scrollTop")
    height = scroller.evaluate("el => el.scrollHeight")
    page.wait_for_function("([el, h]) => el.scrollHeight > h + 50", arg=[scroller.element_handle(), height])
    assert abs(scroller.evaluate("el => el.scrollTop") - top) <= 2, "it stopped following"
    expect(answer).to_have_class(STREAMING)
    jump = page.locator("#jump-button")
    expect(jump).to_be_visible()
    jump.click()
    expect(answer).not_to_have_class(STREAMING)
    page.wait_for_timeout(300)
    assert distance_to_end() < 60
    expect(jump).to_be_hidden()
    tab.assert_clean()


# -- failures ------------------------------------------------------------------------------------


def test_a_failed_turn_explains_itself_and_retry_sends_the_message_again(
    open_tab: Callable[..., Tab], rich_service: Service
) -> None:
    tab = open_tab(rich_service)
    page = tab.page
    answer = tab.chat("Tell me a joke [[fail_once]]")
    error = answer.locator(".error-box[role=alert]")
    expect(error).to_contain_text("The AI model ran into a problem and could not answer. Please try again.")
    answer.locator(".retry-button").click()
    expect(page.locator(".message-user")).to_have_count(1)
    retried = tab.answers.first
    expect(retried).not_to_have_class(STREAMING)
    expect(retried).to_contain_text("You said: “Tell me a joke”")
    expect(retried.locator(".error-box")).to_have_count(0)
    # A failed turn stored nothing: the retried one is the only turn in the history.
    expect(retried).to_contain_text("Earlier messages in this conversation: 0")

    for directive, words in [
        ("[[status=401]]", "The AI model is not set up correctly"),
        ("[[status=429]]", "The AI model is busy right now"),
        ("[[status=404]]", "The AI model set up on this server was not found"),
        ("[[cut_after=3]]", "The connection to the AI model broke off"),
    ]:
        failed = tab.chat(f"hello {directive}")
        expect(failed.locator(".error-box")).to_contain_text(words)
        expect(failed.locator(".retry-button")).to_be_enabled()
    tab.reload()
    expect(page.locator(".message-user")).to_have_count(1)
    tab.assert_clean()


# EventSource cannot read an error answer; Chromium logs the refused request itself.
REFUSED_REQUEST = re.compile(
    r"EventSource|Failed to load resource: the server responded with a status of (409|404|429)"
)


def test_errors_before_streaming_get_specific_messages(
    open_tab: Callable[..., Tab], make_service: Callable[..., Service]
) -> None:
    service = make_service(rate_limit_per_minute=2)
    tab = open_tab(service)
    tab.allowed.append(REFUSED_REQUEST)
    page = tab.page
    tab.chat("one")
    session_id = page.evaluate("localStorage.getItem('personachat.session')")

    # 409: an answer is being written in this chat elsewhere (another tab, a script).
    with tab.api() as client:
        body = {"session_id": session_id, "message": "[[delay_ms=100]] [[chunks=100]] elsewhere"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            assert response.status_code == 200
            busy = tab.chat("two")
            expect(busy.locator(".error-box")).to_contain_text("An answer is still being written in this chat")
            client.post("/chat/stop", params={"session_id": session_id})

    # 429 with Retry-After: the limit of 2 per minute is used up.
    limited = tab.chat("three")
    expect(limited.locator(".error-box")).to_contain_text(re.compile(r"Please try again in \d+ s\."))
    expect(limited.locator(".retry-button")).to_be_disabled()

    # 404: the chat was deleted elsewhere; the message goes back into the box to be sent again.
    with tab.api() as client:
        assert client.delete(f"/chat/sessions/{session_id}").status_code == 200
    page.locator("#composer-input").fill("")
    gone = tab.chat("four")
    expect(gone.locator(".error-box")).to_contain_text("This chat no longer exists")
    expect(gone.locator(".retry-button")).to_have_count(0)
    expect(tab.input).to_have_value("four")
    tab.assert_clean()


def test_a_model_that_does_not_answer_times_out_with_a_kind_message(
    open_tab: Callable[..., Tab], make_service: Callable[..., Service]
) -> None:
    tab = open_tab(make_service(upstream_timeout_seconds=0.5))
    answer = tab.chat("[[hang]] are you there?")
    expect(answer.locator(".error-box")).to_contain_text("The AI model took too long to answer")
    tab.assert_clean()


class CuttableProxy:
    """A TCP proxy on a free loopback port to a local server; cut() drops every open connection."""

    def __init__(self, base_url: str) -> None:
        self.target = int(base_url.rsplit(":", 1)[1])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_dropped_connection_resumes_the_answer_without_duplicates(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    proxy = CuttableProxy(service.base_url)
    try:
        tab = open_tab(Service(proxy.base_url, service.settings))
        tab.allowed.append(re.compile(r"net::ERR_|EventSource"))
        page = tab.page
        requests: list[Any] = []
        page.on("request", lambda request: requests.append(request) if "/chat/stream" in request.url else None)
        answer = tab.chat("[[delay_ms=25]] [[chunks=200]] through a tunnel", done=False)
        expect(answer).to_contain_text(re.compile(r"\bw10\b"))
        proxy.cut()
        expect(answer).not_to_have_class(STREAMING)
        assert answer.locator(".markdown").inner_text().split() == [f"w{index}" for index in range(200)]
        # The browser reconnected by itself, saying where it was; the server resumed from there.
        assert len(requests) == 2
        assert re.fullmatch(r"[0-9a-f]+:[0-9]+", requests[1].all_headers().get("last-event-id", ""))
        tab.page.context.close()
    finally:
        proxy.close()
    tab.assert_clean()


def test_an_unreachable_server_or_store_is_explained_with_a_retry(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    tab.allowed.append(re.compile(r"status of 503|net::ERR_FAILED|EventSource"))
    page = tab.page
    tab.chat("keep me")

    failures: list[str] = []

    def store_down_once(route: Any) -> None:
        if failures:
            route.continue_()
            return
        failures.append(route.request.url)
        body = {"code": "store_unavailable", "detail": "Redis is unreachable"}
        route.fulfill(status=503, json=body, headers={"Retry-After": "2"})

    page.route("**/chat/history?*", store_down_once)
    tab.reload()
    error = page.locator(".error-box")
    expect(error).to_contain_text("The chat history storage is unavailable right now")
    error.locator(".retry-button").click()
    expect(page.locator(".message-user .user-text")).to_have_text(["keep me"])
    expect(tab.answers).to_have_count(1)

    page.route("**/chat/stream*", lambda route: route.abort())
    lost = tab.chat("hello?")
    expect(lost.locator(".error-box")).to_contain_text("Could not reach the server")
    page.unroute("**/chat/stream*")
    lost.locator(".retry-button").click()
    expect(tab.answers.last).to_contain_text("You said: “hello?”")
    expect(tab.answers.last).not_to_have_class(STREAMING)
    expect(page.locator(".message-user")).to_have_count(2)
    tab.assert_clean()


def test_hostile_markup_from_the_user_or_the_model_stays_inert(
    open_tab: Callable[..., Tab], rich_service: Service
) -> None:
    tab = open_tab(rich_service)
    page = tab.page
    img = "<img src=x onerror=alert(1)>"
    script = "<script>alert(2)</script>"
    first = tab.chat(img)
    second = tab.chat(script)
    expect(page.locator(".message-user .user-text")).to_have_text([img, script])
    expect(first).to_contain_text(f"You said: “{img}”")
    expect(second).to_contain_text(f"You said: “{script}”")
    third = tab.chat("[[evil]]")
    expect(third).to_contain_text("Some markup a model might send")
    expect(third).to_contain_text('<img src=x onerror="window.__xss')
    links = third.locator("a")
    for index in range(links.count()):
        href = links.nth(index).get_attribute("href") or ""
        assert not href.lower().startswith("javascript:"), href
        assert links.nth(index).get_attribute("onclick") is None
    expect(third).to_contain_text('<a href="https://example.com" onclick=')  # shown as text, not a link
    expect(third.get_by_role("link", name="pixel")).to_have_attribute("rel", "noopener noreferrer")
    expect(page.locator(".session-title").first).to_have_text("<img src=x onerror=alert(1)>")

    tab.reload()
    expect(page.locator(".message-user")).to_have_count(3)
    assert page.locator("img[src=x], img, iframe, .markdown script").count() == 0
    assert page.locator("[onerror], [onclick]").count() == 0
    assert page.evaluate("window.__xss") is None
    assert tab.dialogs == []
    tab.assert_clean()


# -- the demo model, phones, languages -----------------------------------------------------------


def test_the_offline_demo_model_is_announced_with_how_to_configure_a_real_one(
    open_tab: Callable[..., Tab], make_service: Callable[..., Service]
) -> None:
    demo = make_service(openai_api_key=None, openai_base_url=None)
    tab = open_tab(demo)
    note = tab.page.locator("#demo-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Offline demo model.")
    expect(note.locator("code")).to_have_text(["OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"])
    answer = tab.chat("Hi demo")
    expect(answer).to_contain_text("Offline demo model.")
    screenshot(tab.page, "demo-model-desktop")
    tab.assert_clean()


def test_no_demo_note_when_a_model_is_configured(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    expect(tab.page.locator("#persona-cards .persona-card")).to_have_count(3)
    expect(tab.page.locator("#demo-note")).to_be_hidden()
    tab.assert_clean()


def test_a_phone_sized_screen_has_no_horizontal_scroll_and_a_drawer_for_chats(
    open_tab: Callable[..., Tab], rich_service: Service
) -> None:
    tab = open_tab(rich_service, viewport=PHONE, color_scheme="dark", is_mobile=True, has_touch=True)
    page = tab.page
    seed_chats(tab)
    tab.reload()

    def assert_fits() -> None:
        widths = page.evaluate(
            """() => [document.documentElement, document.body, document.getElementById('conversation'),
                     document.getElementById('main')].map((el) => el.scrollWidth)"""
        )
        assert max(widths) <= PHONE["width"], widths
        overflowing = page.evaluate(
            """() => [...document.querySelectorAll('#main *')].filter(el => {
                   const box = el.getBoundingClientRect();
                   const scroller = el.closest('pre, .table-wrap, .composer-hint, .persona-description, .chat-title');
                   return box.width > 0 && box.right > innerWidth + 1 && !scroller;
               }).map(el => el.className || el.tagName)"""
        )
        assert overflowing == []

    assert_fits()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.locator("#persona-select").select_option("programmer")
    answer = tab.chat(RICH_PROMPT)
    expect(answer.locator(".code-block")).to_be_visible()
    assert_fits()
    screenshot(page, "screenshot-phone")

    page.locator("#menu-button").click()
    expect(page.locator("#sidebar")).to_be_in_viewport()
    expect(page.locator(".session")).to_have_count(3)
    page.wait_for_timeout(300)  # the drawer slides in
    screenshot(page, "phone-drawer")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    expect(page.locator("#menu-button")).to_be_focused()
    page.locator("#menu-button").click()
    page.locator(".session-open", has_text="Kyoto").click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    expect(page.locator(".message-user .user-text")).to_have_text(["Plan a 3-day trip to Kyoto"])
    assert_fits()
    tab.assert_clean()


def test_the_page_speaks_the_browsers_language_and_can_switch(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service, locale="zh-CN")
    page = tab.page
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#new-chat")).to_have_text("新建聊天")
    expect(page.locator("#welcome-title")).to_have_text("想和谁聊天？")
    expect(tab.input).to_have_attribute("placeholder", "给Assistant发消息…")
    answer = tab.chat("你好 [[status=500]]")
    expect(answer.locator(".error-box")).to_contain_text("AI 模型出现问题")
    expect(answer.locator(".retry-button")).to_have_text("重试")
    screenshot(page, "chinese-desktop")

    page.locator("#language-select").select_option("en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#new-chat")).to_have_text("New chat")
    expect(answer.locator(".retry-button")).to_have_text("Try again")
    expect(answer.locator(".error-box")).to_contain_text("The AI model ran into a problem")
    expect(page.locator("#composer-hint")).to_have_text("Enter to send · Shift+Enter for a new line")
    tab.reload()
    expect(page.locator("#new-chat")).to_have_text("New chat")
    tab.assert_clean()


def test_every_string_has_both_languages(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    missing = tab.page.evaluate(
        """async () => {
            const { LANGUAGES } = await import('/static/js/i18n.js');
            const keys = Object.keys(LANGUAGES.en);
            return Object.entries(LANGUAGES).flatMap(([lang, table]) =>
                keys.filter((key) => !table[key]).map((key) => `${lang}:${key}`));
        }"""
    )
    assert missing == []
    tab.assert_clean()
