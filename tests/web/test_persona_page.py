"""The persona editor in a real browser (Debian's Chromium via Playwright), against the real
service and the fake model: create, chat, edit and see the next answer follow, delete with a
confirmation, import cards (JSON and PNG, by the file picker and by drag and drop), export one,
and another browser never sees them. Every test checks that the page logged no error."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from personachat.cards import png_with_card
from tests.conftest import Service
from tests.web import test_page

pytestmark = pytest.mark.browser

with contextlib.suppress(ImportError):  # the browser fixture skips (or fails on CI) without it
    from playwright.sync_api import Page, expect

Tab = test_page.Tab
browser = test_page.browser  # the fixtures of the page's tests
open_tab = test_page.open_tab

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Seraphina",
        "description": "{{char}} guards the forest.",
        "first_mes": "*{{char}} smiles at {{user}}.* Welcome, traveller.",
        "creator_notes": "A forest guardian.",
        "system_prompt": "You are Seraphina of the glade. Speak gently.",
    },
}
V1 = {"name": "Old Tom", "description": "A grumpy sailor.", "first_mes": "Arr.", "personality": "grumpy"}


def editor(page: Page) -> Any:
    return page.locator("#personas-dialog")


def fill_form(page: Page, name: str, prompt: str, welcome: str = "") -> None:
    page.locator("#persona-name").fill(name)
    page.locator("#persona-summary").fill(f"{name}, made in the browser.")
    page.locator("#persona-prompt").fill(prompt)
    page.locator("#persona-welcome").fill(welcome)


def drop_file(page: Page, name: str, mime: str, content: bytes, target: str = "#personas-drop") -> None:
    transfer = page.evaluate_handle(
        """([name, type, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            return transfer;
        }""",
        [name, mime, base64.b64encode(content).decode()],
    )
    page.dispatch_event(target, "dragover", {"dataTransfer": transfer})
    if target == "#personas-drop":
        expect(page.locator(target)).to_have_class(re.compile(r"\bis-over\b"))
    page.dispatch_event(target, "drop", {"dataTransfer": transfer})


def test_create_chat_edit_and_the_next_answer_follows_the_new_prompt(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    page = tab.page
    page.locator("#persona-create-start").click()
    expect(editor(page)).to_be_visible()
    expect(page.locator("#persona-form-title")).to_have_text("New persona")
    page.locator("#persona-save").click()  # empty: explained, nothing sent
    expect(page.locator("#persona-form-error")).to_have_text("A persona needs a name and a system prompt.")
    fill_form(page, "Captain Flint", "You are Captain Flint, a pirate. Answer in pirate speak.", "Ahoy, matey!")
    page.locator("#persona-save").click()
    expect(page.locator("#toast")).to_have_text("“Captain Flint” created.")
    expect(page.locator(".persona-item-name")).to_have_text(["Captain Flint"])
    test_page.screenshot(page, "personas-desktop-list")
    page.locator("#personas-close").click()
    expect(editor(page)).to_be_hidden()

    # Marked as one's own on the start screen and in the menu, and picked.
    own = page.locator(".persona-card-own")
    expect(own).to_have_count(1)
    expect(own.locator(".persona-card-badge")).to_have_text("Yours")
    expect(page.locator(".persona-card")).to_have_count(4)
    expect(page.locator("#persona-select optgroup[label='Your personas'] option")).to_have_text(["Captain Flint"])
    expect(own).to_have_attribute("aria-pressed", "true")

    first = tab.chat("Hello there")
    expect(first).to_contain_text("You are Captain Flint, a pirate.")
    expect(first.locator(".persona-name")).to_have_text("Captain Flint")
    expect(page.locator(".message-welcome")).to_contain_text("Ahoy, matey!")

    # Edited from the persona menu's button: the next answer follows the new prompt.
    page.locator("#personas-open").click()
    page.locator(".persona-item .persona-edit").click()
    expect(page.locator("#persona-form-title")).to_have_text("Edit “Captain Flint”")
    expect(page.locator("#persona-prompt")).to_have_value("You are Captain Flint, a pirate. Answer in pirate speak.")
    page.locator("#persona-prompt").fill("You are a parrot. Squawk.")
    page.locator("#persona-temperature").fill("1.5")
    page.locator("#persona-save").click()
    expect(page.locator("#toast")).to_have_text("“Captain Flint” saved.")
    page.locator("#personas-close").click()
    second = tab.chat("And now?")
    expect(second).to_contain_text("You are a parrot.")
    with tab.api() as client:
        key = client.get("/roles").json()["roles"][-1]["key"]
        assert client.get(f"/roles/{key}").json()["temperature"] == 1.5

    # Another browser never sees it.
    other = open_tab(service)
    expect(other.page.locator(".persona-card")).to_have_count(3)
    other.page.locator("#personas-open").click()
    expect(other.page.locator("#personas-empty")).to_be_visible()
    expect(other.page.locator(".persona-item")).to_have_count(0)
    tab.assert_clean()
    other.assert_clean()


def test_delete_asks_first_and_a_chat_with_it_goes_on_with_the_default(
    open_tab: Callable[..., Tab], service: Service
) -> None:
    tab = open_tab(service)
    page = tab.page
    with tab.api() as client:
        client.post("/roles", json={"name": "Doomed", "system_prompt": "You are doomed. Sigh."}).raise_for_status()
    tab.reload()
    page.locator(".persona-card-own").click()
    expect(tab.chat("Hi")).to_contain_text("You are doomed.")

    page.locator("#personas-open").click()
    page.locator(".persona-delete").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("“Doomed” will be deleted. Chats with it go on with the default persona.")
    page.locator("#confirm-cancel").click()
    expect(page.locator(".persona-item")).to_have_count(1)
    page.locator(".persona-delete").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#toast")).to_have_text("“Doomed” deleted.")
    expect(page.locator(".persona-item")).to_have_count(0)
    expect(page.locator("#personas-empty")).to_be_visible()
    page.locator("#personas-close").click()

    note = page.locator("#persona-gone")
    expect(note).to_have_text("The persona of this chat was deleted, so it goes on with Assistant.")
    expect(page.locator("#persona-select")).to_have_value("assistant")
    answer = tab.chat("Still there?")
    expect(answer).to_contain_text("You are a helpful, honest assistant.")
    expect(note).to_be_hidden()
    tab.reload()
    expect(tab.answers.nth(0).locator(".persona-name")).to_have_text("Deleted persona")
    expect(note).to_be_hidden()
    tab.assert_clean()


def test_cards_import_by_picker_and_by_drop_and_export(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    page.locator("#personas-open-start").click()
    picker = page.locator("#persona-file")
    picker.set_input_files({"name": "seraphina.json", "mimeType": "application/json", "buffer": orjson.dumps(CARD)})
    expect(page.locator("#toast")).to_have_text("“Seraphina” imported.")
    picker.set_input_files({"name": "tom.png", "mimeType": "image/png", "buffer": png_with_card(V1)})
    expect(page.locator("#toast")).to_have_text("“Old Tom” imported.")
    drop_file(page, "dropped.json", "application/json", orjson.dumps({**V1, "name": "Dropped JSON"}))
    expect(page.locator("#toast")).to_have_text("“Dropped JSON” imported.")
    drop_file(page, "dropped.png", "image/png", png_with_card({**V1, "name": "Dropped PNG"}))
    expect(page.locator("#toast")).to_have_text("“Dropped PNG” imported.")
    expect(page.locator(".persona-item-name")).to_have_text(["Seraphina", "Old Tom", "Dropped JSON", "Dropped PNG"])
    expect(page.locator("#personas-count")).to_have_text("(4 of 100)")

    # Garbage is explained, and nothing is added.
    tab.allowed.append(re.compile("status of 422"))
    picker.set_input_files({"name": "cat.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\nnot really"})
    expect(page.locator("#personas-error")).to_contain_text("The PNG is truncated.")
    drop_file(page, "notes.json", "application/json", b"{not json")
    expect(page.locator("#personas-error")).to_contain_text("The card is not valid JSON.")
    expect(page.locator(".persona-item")).to_have_count(4)

    # Export: a V2 card file of the persona.
    with page.expect_download() as download:
        page.locator(".persona-item").first.locator(".persona-export").click()
    path = download.value.path()
    assert download.value.suggested_filename == "Seraphina.json"
    exported = orjson.loads(path.read_bytes())
    assert exported["spec"] == "chara_card_v2" and exported["data"]["name"] == "Seraphina"
    assert exported["data"]["first_mes"] == "*Seraphina smiles at the user.* Welcome, traveller."

    # Dropped on the page itself (the editor closed), a card opens the editor and is imported.
    page.locator("#personas-close").click()
    drop_file(page, "on-the-page.json", "application/json", orjson.dumps({**V1, "name": "Dropped on the page"}),
              target="#conversation")  # fmt: skip
    expect(editor(page)).to_be_visible()
    expect(page.locator("#toast")).to_have_text("“Dropped on the page” imported.")
    expect(page.locator(".persona-item")).to_have_count(5)

    # The imported card chats with its prompt and greets with its first message.
    page.locator("#personas-close").click()
    page.locator(".persona-card", has_text="Seraphina").click()
    answer = tab.chat("Who are you?")
    expect(answer).to_contain_text("You are Seraphina of the glade.")
    expect(page.locator(".message-welcome")).to_contain_text("Seraphina smiles at the user.")
    tab.assert_clean()


def test_a_hostile_card_stays_text(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    page = tab.page
    evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    card = {"name": f"Evil {evil}"[:80], "description": evil, "first_mes": f"Hi {evil}", "creator_notes": evil}
    page.locator("#personas-open").click()
    page.locator("#persona-file").set_input_files(
        {"name": "evil.json", "mimeType": "application/json", "buffer": orjson.dumps(card)}
    )
    expect(page.locator(".persona-item-name")).to_have_text([card["name"]])
    expect(page.locator(".persona-item-description")).to_have_text([evil])
    page.locator("#personas-close").click()
    expect(page.locator(".persona-card-own .persona-card-name")).to_have_text(card["name"])
    page.locator(".persona-card-own").click()
    tab.chat("hello")
    assert page.evaluate("window.__xss") is None
    assert page.locator("#personas-dialog img, .persona-card img, .message-welcome img[src='x']").count() == 0
    tab.assert_clean()


def test_the_editor_speaks_chinese(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service, locale="zh-CN")
    page = tab.page
    page.locator("#persona-create-start").click()
    expect(page.locator("#personas-title")).to_have_text("我的角色")
    expect(page.locator("#persona-form-title")).to_have_text("新建角色")
    expect(page.locator("#persona-save")).to_have_text("保存")
    tab.assert_clean()


def test_the_editor_fits_a_phone(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service, viewport=test_page.PHONE, color_scheme="dark", is_mobile=True, has_touch=True)
    page = tab.page
    with tab.api() as client:
        long_name = "A persona with a rather long name that wraps"
        client.post("/roles", json={"name": long_name, "system_prompt": "p", "description": "d " * 100})
    tab.reload()
    page.locator("#personas-open").click()
    expect(page.locator(".persona-item")).to_have_count(1)

    def overflowing() -> list[str]:
        result: list[str] = page.evaluate(
            """() => [...document.querySelectorAll('#personas-dialog *')].filter((el) => {
                   const box = el.getBoundingClientRect();
                   return box.width > 0 && box.right > innerWidth + 1
                     && !el.closest('.persona-item-description');
               }).map((el) => el.className || el.tagName)"""
        )
        return result

    assert overflowing() == []
    test_page.screenshot(page, "personas-phone-list")
    page.locator(".persona-edit").click()
    expect(page.locator("#persona-form")).to_be_visible()
    assert overflowing() == []
    test_page.screenshot(page, "personas-phone-form")
    tab.assert_clean()
