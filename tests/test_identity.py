"""Who the user is: signed cookies, API keys, and isolation between users."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from personachat.identity import client_bucket
from personachat.store.api_keys import ApiKeyStore
from personachat.store.client import create_redis
from personachat.store.keys import KeySpace
from tests.conftest import Service, chat, history, start_session
from tests.servers import RedisProcess


def create_api_key(service: Service, user: str) -> str:
    async def create() -> str:
        redis = create_redis(service.settings.redis_url or "")
        try:
            key, _info = await ApiKeyStore(redis, KeySpace(service.settings.redis_prefix)).create(user)
            return key
        finally:
            await redis.aclose()

    return asyncio.run(create())


def test_a_new_visitor_gets_a_signed_http_only_cookie_and_keeps_its_identity(service: Service) -> None:
    with service.client() as browser:
        response = browser.post("/chat/start")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP here; HTTPS adds Secure
        session_id = response.json()["session_id"]
        again = browser.get("/chat/history", params={"session_id": session_id})
        assert again.status_code == 200
        assert "set-cookie" not in again.headers  # a known visitor gets no new identity


def test_two_users_cannot_see_clear_delete_stop_or_write_into_each_others_sessions(service: Service) -> None:
    with service.client() as alice, service.client() as mallory:
        session_id = start_session(alice)
        chat(alice, session_id, "my secret plans")
        assert mallory.get("/chat/sessions").json()["total"] == 0  # mallory has an identity of her own
        attempts = [
            mallory.get("/chat/history", params={"session_id": session_id}),
            mallory.delete(f"/chat/history/{session_id}"),
            mallory.delete(f"/chat/sessions/{session_id}"),
            mallory.post("/chat/stop", params={"session_id": session_id}),
            mallory.get("/chat/stream", params={"session_id": session_id, "message": "hi"}),
            mallory.post("/chat/stream", json={"session_id": session_id, "message": "hi"}),
            mallory.get("/chat/stream", params={"session_id": session_id}, headers={"Last-Event-ID": "0" * 16 + ":0"}),
        ]
        missing = mallory.get("/chat/history", params={"session_id": "0" * 32})
        for response in attempts:
            assert response.status_code == 404, (response.request.url, response.text)
            assert response.json() == missing.json()  # foreign and missing look the same
        assert mallory.get("/chat/sessions").json()["total"] == 0
        assert history(alice, session_id)["total"] == 2


def test_the_user_id_query_parameter_is_ignored(service: Service) -> None:
    with service.client() as alice, service.client() as mallory:
        session_id = start_session(alice)
        alice_cookie = alice.cookies.get(service.settings.cookie_name)
        assert alice_cookie
        alice_user = alice_cookie.split(".")[0]
        response = mallory.get("/chat/history", params={"session_id": session_id, "user_id": alice_user})
        assert response.status_code == 404


def test_a_tampered_or_foreign_cookie_is_treated_as_no_cookie(service: Service) -> None:
    with service.client() as alice:
        session_id = start_session(alice)
        real = alice.cookies.get(service.settings.cookie_name) or ""
    user, _, signature = real.partition(".")
    forged_cookies = [
        user + "." + signature[::-1],  # bad signature
        "anon-" + "f" * 32 + "." + signature,  # someone else's id with alice's signature
        user,  # unsigned
    ]
    for forged in forged_cookies:
        with service.client(cookies={service.settings.cookie_name: forged}) as mallory:
            response = mallory.get("/chat/history", params={"session_id": session_id})
            assert response.status_code == 404
            assert "set-cookie" in response.headers  # a fresh anonymous identity instead


def test_a_cookie_signed_with_another_secret_is_rejected(make_service: Callable[..., Service]) -> None:
    one, other = make_service(), make_service(secret_key="another-secret")
    with one.client() as alice:
        session_id = start_session(alice)
        cookie = alice.cookies.get(one.settings.cookie_name) or ""
    with other.client(cookies={other.settings.cookie_name: cookie}) as visitor:
        assert visitor.get("/chat/history", params={"session_id": session_id}).status_code == 404


def test_an_api_key_identifies_its_user_from_any_client(service: Service) -> None:
    key = create_api_key(service, "script-user")
    auth = {"Authorization": f"Bearer {key}"}
    with service.client(headers=auth) as first, service.client(headers=auth) as second:
        session_id = start_session(first)
        assert "set-cookie" not in first.post("/chat/start").headers
        chat(first, session_id, "from a script")
        assert history(second, session_id)["total"] == 2
        assert second.get("/chat/sessions").json()["total"] == 2


@pytest.mark.parametrize("header", ["Bearer pck_wrong", "Bearer", "Basic dXNlcjpwYXNz", "pck_no_scheme"])
def test_a_wrong_api_key_is_401_even_with_a_valid_cookie(service: Service, header: str) -> None:
    with service.client() as browser:
        session_id = start_session(browser)
        response = browser.get("/chat/history", params={"session_id": session_id}, headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"


def test_without_anonymous_identities_a_request_needs_a_key(make_service: Callable[..., Service]) -> None:
    service = make_service(allow_anonymous=False)
    with service.client() as browser:
        response = browser.post("/chat/start")
        assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
        assert "set-cookie" not in response.headers
        assert browser.get("/roles").status_code == 200  # public
    key = create_api_key(service, "owner")
    with service.client(headers={"Authorization": f"Bearer {key}"}) as script:
        assert script.post("/chat/start").status_code == 200


def test_api_keys_are_stored_only_as_hashes(service: Service, redis_server: RedisProcess) -> None:
    key = create_api_key(service, "hashed-user")
    client = redis_server.client()
    for name in client.scan_iter(f"{service.settings.redis_prefix}:*"):
        assert key.encode() not in name
        kind = client.type(name)
        if kind == b"hash":
            assert all(key.encode() not in value for value in client.hgetall(name).values())


def test_dropping_the_cookie_does_not_buy_fresh_limits(make_service: Callable[..., Service]) -> None:
    # Before: 60 turns in 2 s, each from a fresh cookie jar, all admitted (5 a minute per user).
    service = make_service(rate_limit_per_minute=5, anon_identities_per_minute=20)
    statuses = []
    for _ in range(60):
        with service.client() as fresh:
            response = fresh.post("/chat/start")
            statuses.append(response.status_code)
    assert statuses.count(200) == 20 and statuses[20:] == [429] * 40
    assert response.json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "set-cookie" not in response.headers
    key = create_api_key(service, "keyed")
    with service.client(headers={"Authorization": f"Bearer {key}"}) as script:
        assert script.post("/chat/start").status_code == 200  # API keys are not anonymous


def test_a_visitor_with_a_cookie_is_not_limited_by_new_visitors(make_service: Callable[..., Service]) -> None:
    service = make_service(anon_identities_per_minute=2)
    with service.client() as alice:
        start_session(alice)
        for _ in range(3):
            with service.client() as fresh:
                fresh.post("/chat/start")
        assert alice.post("/chat/start").status_code == 200  # her identity is not minted again


def test_turning_anonymous_off_refuses_cookies_issued_before(make_service: Callable[..., Service]) -> None:
    before = make_service()
    with before.client() as browser:
        session_id = start_session(browser)
        cookie = browser.cookies.get(before.settings.cookie_name) or ""
    after = make_service(allow_anonymous=False)  # same Redis, prefix and SECRET_KEY
    with after.client(cookies={after.settings.cookie_name: cookie}) as browser:
        response = browser.get("/chat/history", params={"session_id": session_id})
        assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
        assert browser.post("/chat/start").status_code == 401


def test_ipv6_clients_are_counted_by_their_64_block() -> None:
    assert client_bucket("2001:db8:1:2:aaaa::1") == client_bucket("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_bucket("192.0.2.7") == "192.0.2.7"
    assert client_bucket(None) == client_bucket("testclient") == "other"
