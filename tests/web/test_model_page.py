"""The model picker in a real browser (Debian's Chromium via Playwright), against the real
service with two fake providers: the picker offers both models, a chat answers from the one
chosen, switching it sends the next message to the other, each answer is labelled with its
model (token usage on demand), the choice is remembered per chat, and with one model there
is no picker. Every test checks that the page logged no error."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from personachat.demo_model import DemoModel
from tests.conftest import Service
from tests.servers import ThreadedServer
from tests.web import test_page

pytestmark = pytest.mark.browser

with contextlib.suppress(ImportError):  # the browser fixture skips (or fails on CI) without it
    from playwright.sync_api import expect

Tab = test_page.Tab
browser = test_page.browser  # the fixtures of the page's tests
open_tab = test_page.open_tab


@pytest.fixture(scope="module")
def two() -> Iterator[dict[str, tuple[DemoModel, str]]]:
    made: dict[str, tuple[DemoModel, str]] = {}
    servers = []
    for name in ("one", "two"):
        model = DemoModel(record=True, directives=True, usage=name == "one")
        server = ThreadedServer(model.app).start()
        servers.append(server)
        made[name] = (model, server.base_url + "/v1")
    yield made
    for server in servers:
        server.stop()


@pytest.fixture
def two_models(make_service: Callable[..., Service], two: dict[str, tuple[DemoModel, str]], tmp_path: Path) -> Service:
    for model, _ in two.values():
        model.requests.clear()
    path = tmp_path / "models.yaml"
    path.write_text(
        "default_model: alpha\nproviders:\n"
        f"  - name: one\n    base_url: {two['one'][1]}\n    models:\n      - id: alpha\n"
        f"  - name: two\n    base_url: {two['two'][1]}\n    models:\n      - id: beta\n        upstream: beta-up\n",
        encoding="utf-8",
    )
    return make_service(models_file=path)


def test_the_picker_chooses_the_model_per_chat_and_labels_each_answer(
    open_tab: Callable[..., Tab], two_models: Service, two: dict[str, tuple[DemoModel, str]]
) -> None:
    tab = open_tab(two_models)
    page = tab.page
    picker = page.locator("#model-select")
    expect(page.locator("#model-picker")).to_be_visible()
    expect(picker.locator("option")).to_have_text(["alpha", "beta"])
    expect(picker).to_have_value("alpha")

    first = tab.chat("hello alpha")
    expect(first.locator(".answer-model")).to_have_text("alpha")
    assert len(two["one"][0].requests) == 1 and two["two"][0].requests == []

    picker.select_option("beta")
    second = tab.chat("hello beta")
    expect(second.locator(".answer-model")).to_have_text("beta")
    assert [r["model"] for r in two["two"][0].requests] == ["beta-up"] and len(two["one"][0].requests) == 1

    # Token usage, on demand: the provider "one" reports it, "two" does not.
    usage = first.locator(".answer-usage")
    expect(usage).to_be_hidden()
    first.locator(".answer-model").click()
    expect(usage).to_be_visible()
    expect(usage).to_have_text(re.compile(r"^\d+ prompt \+ \d+ answer tokens$"))
    expect(first.locator(".answer-model")).to_have_attribute("title", re.compile("prompt"))

    # After a reload: the history says who wrote what, and the chat's choice is kept.
    tab.reload()
    expect(tab.answers.locator(".answer-model")).to_have_text(["alpha", "beta"])
    expect(picker).to_have_value("beta")
    third = tab.chat("still beta")
    expect(third.locator(".answer-model")).to_have_text("beta")
    assert len(two["two"][0].requests) == 2

    # Another chat keeps its own choice; coming back restores this one's.
    page.locator("#new-chat").click()
    picker.select_option("alpha")
    expect(tab.chat("a new chat").locator(".answer-model")).to_have_text("alpha")
    expect(page.locator(".session")).to_have_count(2)
    page.locator(".session .session-open").nth(1).click()  # newest activity first: the first chat is second
    expect(picker).to_have_value("beta")

    page.locator("#language-select").select_option("zh-CN")
    expect(page.locator("#model-picker .persona-picker-label")).to_have_text("模型")


def test_with_one_model_there_is_no_picker(open_tab: Callable[..., Tab], service: Service) -> None:
    tab = open_tab(service)
    expect(tab.page.locator("#model-picker")).to_be_hidden()
    answer = tab.chat("hi")
    expect(answer.locator(".answer-model")).to_have_text("fake-model")
