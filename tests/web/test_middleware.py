"""The one middleware, over real HTTP: Host check, the cross-site rule (API.md "Sending
safely"), CORS for listed front ends, security headers on every response."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Service, start_session
from tests.test_identity import create_api_key

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.2:9999"}
SAME_SITE = {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9999"}  # another port
FRONT_END = "http://127.0.0.1:5173"


def own_origin(service: Service) -> str:
    return service.base_url


def assert_cross_site(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "cross_site" and response.json()["detail"]
    assert "set-cookie" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("headers", [CROSS_SITE, SAME_SITE, {"Origin": "http://127.0.0.2:9999"}, {"Origin": "null"}])
def test_state_changing_requests_from_another_site_are_refused_and_change_nothing(
    service: Service, headers: dict[str, str]
) -> None:
    with service.client() as browser:
        session_id = start_session(browser)
        cookie = browser.cookies.get(service.settings.cookie_name)
        attempts = [
            browser.post("/chat/start", headers=headers),
            browser.post("/chat/start", headers=headers, data={"role": "teacher"}),  # a form
            browser.post("/chat/stream", headers=headers, json={"session_id": session_id, "message": "hi"}),
            browser.get("/chat/stream", headers=headers, params={"session_id": session_id, "message": "hi"}),
            browser.post("/chat/stop", headers=headers, params={"session_id": session_id}),
            browser.delete(f"/chat/history/{session_id}", headers=headers),
            browser.delete(f"/chat/sessions/{session_id}", headers=headers),
        ]
        for response in attempts:
            assert_cross_site(response)
        assert browser.cookies.get(service.settings.cookie_name) == cookie
        assert browser.get("/chat/sessions").json()["total"] == 1
        assert browser.get("/chat/history", params={"session_id": session_id}).json()["total"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl and scripts
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://ignored.example"},  # Sec-Fetch-Site decides
    ],
)
def test_the_own_page_and_scripts_pass(service: Service, headers: dict[str, str]) -> None:
    with service.client() as client:
        assert client.post("/chat/start", headers=headers).status_code == 200


def test_an_origin_equal_to_the_host_passes_when_sec_fetch_site_is_missing(service: Service) -> None:
    with service.client() as client:
        assert client.post("/chat/start", headers={"Origin": own_origin(service)}).status_code == 200


def test_reads_from_another_site_pass_but_never_replace_or_mint_a_cookie(service: Service) -> None:
    with service.client() as fresh:
        response = fresh.get("/chat/sessions", headers=CROSS_SITE)
        assert response.status_code == 200
        assert "set-cookie" not in response.headers  # not minted where a valid cookie may have been left out
        resume = fresh.get("/chat/stream", headers=CROSS_SITE, params={"session_id": "0" * 32})
        assert resume.status_code != 403  # no message: a read


def test_a_valid_cookie_is_kept_and_never_replaced(service: Service) -> None:
    with service.client() as browser:
        first = browser.post("/chat/start")
        assert "set-cookie" in first.headers
        for _ in range(3):
            assert "set-cookie" not in browser.post("/chat/start").headers


def test_bearer_requests_are_not_affected(service: Service) -> None:
    key = create_api_key(service, "keyed")
    with service.client(headers={"Authorization": f"Bearer {key}", **CROSS_SITE}) as script:
        assert script.post("/chat/start").status_code == 200
    with service.client(headers={"Authorization": "Bearer wrong", **CROSS_SITE}) as script:
        assert script.post("/chat/start").status_code == 401  # a wrong key is still a 401
    with service.client(headers={"Authorization": "Basic dXNlcjpwYXNz", **CROSS_SITE}) as browser:
        assert_cross_site(browser.post("/chat/start"))  # Basic is an ambient browser credential


def test_a_websocket_upgrade_from_another_site_is_refused(service: Service) -> None:
    url = service.base_url.replace("http://", "ws://") + "/chat/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://127.0.0.2:9999", open_timeout=10).close()  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert b'"code":"cross_site"' in refused.value.response.body


def test_listed_front_ends_get_cors_with_credentials_and_others_get_none(make_service: Callable[..., Service]) -> None:
    service = make_service(cors_origins=[FRONT_END])
    front = {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"}  # another port of this host
    with service.client() as browser:
        preflight = browser.options(
            "/chat/start",
            headers={
                **front,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == FRONT_END
        assert preflight.headers["access-control-allow-credentials"] == "true"
        response = browser.post("/chat/start", headers=front, json={"role": "teacher"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == FRONT_END
        assert "set-cookie" in response.headers

        other = browser.post("/chat/start", headers=CROSS_SITE)
        assert_cross_site(other)
        assert "access-control-allow-origin" not in other.headers
        read = browser.get("/chat/sessions", headers=CROSS_SITE)
        assert "access-control-allow-origin" not in read.headers


def test_a_listed_front_end_on_another_site_is_answered_but_never_given_a_cookie(
    make_service: Callable[..., Service],
) -> None:
    # A browser would not send it a SameSite=Lax cookie, so one minted here would only
    # replace the visitor's own (a top-level form POST accepts the Set-Cookie).
    service = make_service(cors_origins=["http://127.0.0.2:9999"])
    with service.client() as browser:
        response = browser.post("/chat/start", headers=CROSS_SITE)
        assert response.status_code == 200
        assert "set-cookie" not in response.headers


def test_without_cors_origins_no_cors_headers_are_sent(service: Service) -> None:
    with service.client() as browser:
        response = browser.get("/roles", headers={"Origin": FRONT_END})
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""])
def test_an_unknown_host_is_refused(service: Service, host: str) -> None:
    with service.client() as client:
        response = client.post("/chat/start", headers={"Host": host})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_host"
        assert "set-cookie" not in response.headers


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_loopback_names_are_allowed_by_default(service: Service, host: str) -> None:
    with service.client() as client:
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_allowed_hosts_names_the_hosts(make_service: Callable[..., Service]) -> None:
    service = make_service(allowed_hosts=["chat.example.com", "*.example.org"])
    with service.client() as client:
        assert client.get("/healthz", headers={"Host": "chat.example.com"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "a.example.org:443"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "example.org.evil"}).status_code == 400
        assert client.get("/healthz", headers={"Host": "127.0.0.1"}).status_code == 400
    anything = make_service(allowed_hosts=["*"])
    with anything.client() as client:
        assert client.get("/healthz", headers={"Host": "whatever.example"}).status_code == 200


def test_every_response_is_nosniff_and_every_html_page_has_a_csp(client: httpx.Client) -> None:
    responses = [
        client.get("/healthz"),
        client.get("/no-such-path"),
        client.get("/static/js/app.js"),
        client.get("/static/index.html"),
        client.get("/"),
        client.get("/docs"),
        client.get("/openapi.json"),
        client.post("/chat/start"),
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
        if response.headers.get("content-type", "").startswith("text/html"):
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp


def test_docs_load_swagger_ui_from_this_server_and_redoc_is_off(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text and "https://" not in page.text
    assert "<script>" not in page.text  # no inline script: the CSP forbids them
    for asset in ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/vendor/swagger-ui/swagger-ui.css"):
        assert client.get(asset).status_code == 200
    assert client.get("/static/vendor/swagger-ui/LICENSE").status_code == 200
    assert client.get("/redoc").status_code == 404
