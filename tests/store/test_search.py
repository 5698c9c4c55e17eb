"""GET /chat/search and the store's search: the caller's sessions only, titles and message
texts, case-insensitive, with a snippet and the matching turn; and how long it takes for a
user with 500 sessions of 100 messages."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from personachat.store.client import Redis, create_redis
from personachat.store.keys import KeySpace
from personachat.store.search import SessionSearch
from tests.conftest import Service, chat, start_session
from tests.servers import RedisProcess


def search(client: httpx.Client, q: str, **params: object) -> dict[str, object]:
    response = client.get("/chat/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_a_word_from_the_middle_of_a_conversation_finds_it_with_its_snippet_and_turn(
    client: httpx.Client,
) -> None:
    found = start_session(client, title="Holiday plans")
    chat(client, found, "hello there")
    events = chat(client, found, "we should visit the Giant's Causeway in the north, I think")
    chat(client, found, "and then?")
    other = start_session(client)
    chat(client, other, "nothing to see")
    result = search(client, "giant's CAUSEWAY")
    assert result["total"] == 1
    (hit,) = result["results"]  # type: ignore[misc]
    assert hit["session_id"] == found and hit["title"] == "Holiday plans" and hit["role"] == "assistant"
    assert hit["turn_id"] == events[0].data["turn_id"]
    assert "Giant's Causeway" in hit["snippet"] and len(hit["snippet"]) <= 125
    assert hit["last_activity"]


def test_titles_match_and_results_come_newest_activity_first_up_to_limit(client: httpx.Client) -> None:
    sessions = [start_session(client, title=f"Recipe {n}") for n in range(3)]
    chat(client, sessions[0], "an older session, active last")
    result = search(client, "recipe")
    assert [hit["session_id"] for hit in result["results"]] == [sessions[0], sessions[2], sessions[1]]  # type: ignore[index]
    assert result["results"][1]["turn_id"] is None and result["results"][1]["snippet"] == "Recipe 2"  # type: ignore[index]
    limited = search(client, "recipe", limit=2)
    assert len(limited["results"]) == 2 and limited["total"] == 3  # type: ignore[arg-type]


def test_case_folding_covers_more_than_ascii_and_long_messages_are_cut_around_the_match(
    client: httpx.Client,
) -> None:
    session_id = start_session(client)
    chat(client, session_id, "Über " + "x" * 500 + " ΣΟΦΊΑ and straße " + "y" * 500)
    for q in ("über", "σοφία", "STRASSE"):
        hits = search(client, q)["results"]
        assert [hit["session_id"] for hit in hits] == [session_id], q  # type: ignore[index]
    snippet = search(client, "σοφία")["results"][0]["snippet"]  # type: ignore[index]
    assert snippet.startswith("…") and snippet.endswith("…") and "ΣΟΦΊΑ" in snippet


def test_another_users_identical_text_is_never_returned(client: httpx.Client, service: Service) -> None:
    mine = start_session(client)
    chat(client, mine, "the secret word is pumpernickel")
    with service.client() as bob:
        theirs = start_session(bob, title="pumpernickel")
        chat(bob, theirs, "the secret word is pumpernickel")
        assert [hit["session_id"] for hit in search(bob, "pumpernickel")["results"]] == [theirs]  # type: ignore[index]
        with service.client() as carol:
            assert search(carol, "pumpernickel") == {"results": [], "total": 0}
    assert [hit["session_id"] for hit in search(client, "PUMPERNICKEL")["results"]] == [mine]  # type: ignore[index]


@pytest.mark.parametrize("params", [{"q": ""}, {"q": "x" * 201}, {}, {"q": "x", "limit": 0}, {"q": "x", "limit": 101}])
def test_bad_queries_are_422(client: httpx.Client, params: dict[str, object]) -> None:
    response = client.get("/chat/search", params=params)  # type: ignore[arg-type]
    assert response.status_code == 422 and set(response.json()) == {"code", "detail"}


def test_a_quote_or_a_backslash_in_the_query_is_found_too(client: httpx.Client) -> None:
    session_id = start_session(client)
    chat(client, session_id, 'she said "yes" to C:\\temp')
    assert search(client, '"yes"')["total"] == 1
    assert search(client, "c:\\temp")["total"] == 1


# -- timing ------------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url)
    yield client
    await client.aclose()


async def test_500_sessions_of_100_messages_are_searched_in_well_under_a_second(redis: Redis) -> None:
    keys = KeySpace("test" + secrets.token_hex(4))
    user = "heavy"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(500):
            sid = secrets.token_hex(16)
            pipe.hset(
                keys.session(user, sid), mapping={"role": "assistant", "title": f"chat {n}", "last_activity": "x"}
            )
            pipe.zadd(keys.sessions(user), {sid: n})
            messages = []
            for m in range(100):
                text = " ".join(words[(n + m + k) % len(words)] for k in range(30))  # ~200 characters
                if (n, m) == (250, 50):
                    text += " the needle in the haystack"
                role = "user" if m % 2 == 0 else "assistant"
                message = {"role": role, "content": text, "timestamp": "2026-01-01T00:00:00Z", "turn_id": f"{m:016x}"}
                messages.append(orjson.dumps(message))
            pipe.rpush(keys.messages(user, sid), *messages)
        await pipe.execute()
    search = SessionSearch(redis, keys)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        hits, total = await search.search(user, "NEEDLE in the", 20)
        timings.append(time.perf_counter() - started)
    assert total == 1 and hits[0].turn_id == f"{50:016x}" and "needle in the haystack" in hits[0].snippet
    started = time.perf_counter()
    common, total = await search.search(user, "Gamma", 20)  # a word of every message: every session
    broad = time.perf_counter() - started
    assert total == 500 and len(common) == 20
    print(
        f"search of 500 sessions x 100 messages: {min(timings) * 1000:.0f} ms (rare word),"
        f" {broad * 1000:.0f} ms (common word)"
    )
    assert min(timings) < 1.0 and broad < 2.0
    await redis.delete(*[key async for key in redis.scan_iter(match=keys.all_keys_pattern(), count=1000)])
