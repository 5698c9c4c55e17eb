"""The page's craft in a real browser (Chromium via Playwright), in both of its languages:
regenerate, edit in place, edit an earlier message, rename a chat, find it by a word from the
middle of the conversation, and a send retried after the network failed, never doubled."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Service
from tests.web import test_page
from tests.web.test_page import STREAMING, Tab

pytestmark = pytest.mark.browser

with contextlib.suppress(ImportError):  # the browser fixture skips (or fails on CI) without it
    from playwright.sync_api import Route, expect

browser = test_page.browser  # the fixtures of the page's tests
open_tab = test_page.open_tab

WORDS: dict[str, dict[str, str]] = {
    "en-US": {
        "regenerate": "Regenerate",
        "send": "Send",
        "confirm": "The messages after it will be removed",
        "edit_ok": "Edit",
        "renamed": "Chat renamed.",
        "search": "Search chats",
        "no_match": "No chats match “zzzq”.",
        "network": "Could not reach the server",
        "retry": "Try again",
    },
    "zh-CN": {
        "regenerate": "重新生成",
        "send": "发送",
        "confirm": "它之后的消息将被删除",
        "edit_ok": "编辑",
        "renamed": "聊天已重命名。",
        "search": "搜索聊天",
        "no_match": "没有与“zzzq”匹配的聊天。",
        "network": "无法连接到服务器",
        "retry": "重试",
    },
}
LOCALES = list(WORDS)


def stored(tab: Tab, session_id: str | None = None) -> list[dict[str, Any]]:
    with tab.api() as client:
        if session_id is None:
            session_id = client.get("/chat/sessions").json()["sessions"][0]["session_id"]
        messages: list[dict[str, Any]] = client.get("/chat/history", params={"session_id": session_id}).json()[
            "messages"
        ]
        return messages


def user_texts(tab: Tab) -> list[str]:
    return tab.page.locator(".message-user .user-text").all_inner_texts()


@pytest.mark.parametrize("locale", LOCALES)
def test_regenerate_replaces_the_last_answer(open_tab: Callable[..., Tab], service: Service, locale: str) -> None:
    tab = open_tab(service, locale=locale)
    words = WORDS[locale]
    tab.chat("first question")
    tab.chat("second question")
    before = stored(tab)
    regenerate = tab.page.locator("button.regenerate-button")
    expect(regenerate).to_have_count(1)  # on the last answer only
    expect(tab.answers.last.locator("button.regenerate-button")).to_have_text(words["regenerate"])
    regenerate.click()
    expect(tab.answers).to_have_count(2)
    expect(tab.answers.last).not_to_have_class(STREAMING)
    expect(regenerate).to_have_count(1)
    assert user_texts(tab) == ["first question", "second question"]
    after = stored(tab)
    assert [m["content"] for m in after[:3]] == [m["content"] for m in before[:3]]
    assert len(after) == 4 and after[3]["turn_id"] != before[3]["turn_id"]
    assert "**2**" in after[3]["content"]  # the model saw the two messages before the turn
    tab.page.locator(".message-user").last.hover()
    test_page.screenshot(tab.page, f"craft-regenerate-{locale}")
    tab.assert_clean()


@pytest.mark.parametrize("locale", LOCALES)
def test_the_last_message_is_edited_in_place_and_resent(
    open_tab: Callable[..., Tab], service: Service, locale: str
) -> None:
    tab = open_tab(service, locale=locale)
    words = WORDS[locale]
    tab.chat("one")
    tab.chat("two with a tpyo")
    last_user = tab.page.locator(".message-user").last
    last_user.hover()
    last_user.locator("button.edit-button").click()
    editor = last_user.locator(".edit-input")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("two with a tpyo")
    expect(tab.page.locator("#confirm-dialog")).to_be_hidden()  # the last one: no question asked
    # Esc puts it back as it was.
    editor.press("Escape")
    expect(editor).to_have_count(0)
    assert user_texts(tab) == ["one", "two with a tpyo"]
    last_user.locator("button.edit-button").click()
    editor.fill("two without a typo")
    expect(last_user.locator(".edit-send")).to_have_text(words["send"])
    last_user.locator(".edit-send").click()
    expect(tab.answers).to_have_count(2)
    expect(tab.answers.last).not_to_have_class(STREAMING)
    assert user_texts(tab) == ["one", "two without a typo"]
    assert [m["content"] for m in stored(tab)][::2] == ["one", "two without a typo"]
    tab.reload()
    assert user_texts(tab) == ["one", "two without a typo"]
    tab.assert_clean()


@pytest.mark.parametrize("locale", LOCALES)
def test_an_earlier_message_is_edited_after_a_warning_that_later_ones_go(
    open_tab: Callable[..., Tab], service: Service, locale: str
) -> None:
    tab = open_tab(service, locale=locale)
    words = WORDS[locale]
    for text in ("alpha", "beta", "gamma"):
        tab.chat(text)
    first = tab.page.locator(".message-user").first
    first.hover()
    first.locator("button.edit-button").click()
    dialog = tab.page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(words["confirm"])
    tab.page.locator("#confirm-cancel").click()
    expect(first.locator(".edit-input")).to_have_count(0)
    first.locator("button.edit-button").click()
    expect(tab.page.locator("#confirm-ok")).to_have_text(words["edit_ok"])
    tab.page.locator("#confirm-ok").click()
    editor = first.locator(".edit-input")
    editor.fill("ALPHA again")
    editor.press("Enter")
    expect(tab.page.locator(".message-user")).to_have_count(1)
    expect(tab.answers).to_have_count(1)
    expect(tab.answers.first).not_to_have_class(STREAMING)
    assert user_texts(tab) == ["ALPHA again"]
    messages = stored(tab)
    assert [m["content"] for m in messages][:1] == ["ALPHA again"] and len(messages) == 2
    tab.assert_clean()


@pytest.mark.parametrize("locale", LOCALES)
def test_a_chat_is_renamed_inline_enter_saves_escape_cancels(
    open_tab: Callable[..., Tab], service: Service, locale: str
) -> None:
    tab = open_tab(service, locale=locale)
    page = tab.page
    tab.chat("a chat about the sea")
    session = page.locator(".session").first
    session.hover()
    session.locator(".session-rename").click()
    field = session.locator(".session-rename-input")
    expect(field).to_be_focused()
    field.fill("Sea voyage")
    field.press("Enter")
    expect(page.locator(".session-title")).to_have_text(["Sea voyage"])
    expect(page.locator("#chat-title")).to_have_text("Sea voyage")
    expect(page.locator("#toast")).to_have_text(WORDS[locale]["renamed"])
    page.locator(".session-rename").first.click()
    page.locator(".session-rename-input").fill("Not this")
    page.locator(".session-rename-input").press("Escape")
    expect(page.locator(".session-title")).to_have_text(["Sea voyage"])
    with tab.api() as client:
        assert client.get("/chat/sessions").json()["sessions"][0]["title"] == "Sea voyage"
    tab.reload()
    expect(page.locator(".session-title")).to_have_text(["Sea voyage"])
    tab.assert_clean()


@pytest.mark.parametrize("locale", LOCALES)
def test_a_chat_is_found_by_a_word_from_its_middle_with_the_keyboard(
    open_tab: Callable[..., Tab], service: Service, locale: str
) -> None:
    tab = open_tab(service, locale=locale)
    page = tab.page
    words = WORDS[locale]
    with tab.api() as client:
        for opening, middle in (("Kyoto trip", "temples and the Philosopher's Path"), ("Bread", "a sourdough starter")):
            session_id = client.post("/chat/start", json={}).json()["session_id"]
            for text in (opening, f"tell me about {middle}", "thanks"):
                client.post("/chat/stream", json={"session_id": session_id, "message": text}).read()
    tab.reload()
    search = page.locator("#session-search")
    expect(search).to_have_attribute("placeholder", words["search"])
    search.fill("PHILOSOPHER")
    results = page.locator(".search-result")
    expect(results).to_have_count(1)
    expect(results.first.locator(".search-title")).to_have_text("Kyoto trip")
    expect(results.first.locator(".search-snippet mark")).to_have_text("Philosopher")
    test_page.screenshot(page, f"craft-search-{locale}")
    expect(page.locator(".session-list")).to_be_hidden()
    search.fill("e")  # a letter of every chat: two results, the newest first
    expect(results).to_have_count(2)
    expect(results.first).to_have_attribute("aria-selected", "true")
    search.press("ArrowDown")
    expect(results.nth(1)).to_have_attribute("aria-selected", "true")
    expect(search).to_have_attribute("aria-activedescendant", "search-result-1")
    search.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Kyoto trip")
    search.fill("zzzq")
    expect(page.locator("#search-empty")).to_have_text(words["no_match"])
    search.fill("sourdough")
    expect(results).to_have_count(1)
    search.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Bread")
    expect(page.locator(".message-user.is-found .user-text")).to_have_text("tell me about a sourdough starter")
    search.press("Escape")
    expect(search).to_have_value("")
    expect(page.locator(".session-list .session")).to_have_count(2)
    tab.assert_clean()


@pytest.mark.parametrize("locale", LOCALES)
def test_a_send_retried_after_the_network_failed_is_never_doubled(
    open_tab: Callable[..., Tab], service: Service, locale: str
) -> None:
    tab = open_tab(service, locale=locale)
    tab.allowed.append(re.compile(r"net::ERR_|Failed to fetch|EventSource|Failed to load resource"))
    page = tab.page
    words = WORDS[locale]
    tab.chat("hello before")
    sent: list[str] = []

    def lose_the_answer(route: Route) -> None:
        # The message reaches the server (the turn starts and is stored), then the cable is
        # pulled: the answer never comes back, and the page's own retry finds no network.
        sent.append(route.request.url if route.request.method == "GET" else route.request.post_data or "")
        if len(sent) == 1:
            route.fetch()
            page.context.set_offline(True)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route(re.compile(r"/chat/stream"), lose_the_answer)
    answer = tab.chat("[[chunks=5]] the message that must not double", done=False)
    expect(answer.locator(".error-box")).to_contain_text(words["network"])
    page.context.set_offline(False)
    answer.locator(".retry-button").click()
    expect(tab.answers).to_have_count(2)
    expect(tab.answers.last).not_to_have_class(STREAMING)
    expect(tab.answers.last.locator(".markdown")).to_have_text(re.compile(r"w0 w1 w2 w3 w4"))
    messages = stored(tab)
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "hello before",
        "[[chunks=5]] the message that must not double",
    ]
    ids = [re.search(r"client_message_id[=\":]+([0-9a-f]+)", item) for item in sent]
    assert all(ids) and len({match.group(1) for match in ids if match}) == 1 and len(sent) >= 2
    assert user_texts(tab) == ["hello before", "[[chunks=5]] the message that must not double"]
    tab.reload()
    expect(tab.answers).to_have_count(2)
    tab.assert_clean()
