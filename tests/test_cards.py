"""Character cards: V2 and V1 JSON, PNG cards, and the garbage a file picker can bring, through
POST /roles/import (real uvicorn, real Redis), and the V2 export that imports back the same."""

from __future__ import annotations

import base64
import socket
import struct
import time
import zlib
from typing import Any

import httpx
import orjson
import pytest

from personachat.cards import MAX_CARD_BYTES, PNG_SIGNATURE, card_fields, png_with_card
from tests.conftest import FakeModel, Service, chat, start_session

V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Seraphina",
        "description": "{{char}} is a guardian of the forest. She watches over {{USER}}.",
        "personality": "Kind, { {not a placeholder} }, protective of <user>.",
        "scenario": "{{Char}} finds {{ user }} hurt in the woods.",
        "first_mes": "*{{char}} kneels beside {{user}}.* Are you hurt?",
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: I am <BOT>.",
        "creator_notes": "A gentle forest guardian.\nSecond line.",
        "system_prompt": "{{original}}Stay in character as {{char}}.",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": ["fantasy"],
        "creator": "someone",
        "character_version": "1",
        "extensions": {},
    },
}
V2_PROMPT = (
    "Stay in character as Seraphina.\n\n"
    "Description:\nSeraphina is a guardian of the forest. She watches over the user.\n\n"
    "Personality:\nKind, { {not a placeholder} }, protective of the user.\n\n"
    "Scenario:\nSeraphina finds the user hurt in the woods.\n\n"
    "Example dialogue:\n<START>\nthe user: Who are you?\nSeraphina: I am Seraphina."
)
V1 = {
    "name": "Old Tom",
    "description": "{{char}} is a sailor.",
    "personality": "grumpy",
    "scenario": "",
    "first_mes": "Arr, {{user}}.",
    "mes_example": "",
}
V1_PROMPT = "You are Old Tom.\n\nDescription:\nOld Tom is a sailor.\n\nPersonality:\ngrumpy"


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(*chunks: bytes) -> bytes:
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    return PNG_SIGNATURE + header + b"".join(chunks) + chunk(b"IDAT", zlib.compress(b"\0" * 5)) + chunk(b"IEND", b"")


def b64(card: Any) -> bytes:
    return base64.b64encode(orjson.dumps(card))


def import_card(client: httpx.Client, body: bytes, content_type: str) -> httpx.Response:
    return client.post("/roles/import", content=body, headers={"Content-Type": content_type})


def test_a_v2_card_maps_to_a_persona_as_documented(client: httpx.Client, model: FakeModel) -> None:
    response = client.post("/roles/import", json=V2)
    assert response.status_code == 201, response.text
    persona = response.json()
    assert persona["name"] == "Seraphina" and persona["source"] == "user" and persona["editable"] is True
    assert persona["system_prompt"] == V2_PROMPT
    assert persona["welcome_message"] == "*Seraphina kneels beside the user.* Are you hurt?"
    assert persona["description"] == "A gentle forest guardian. Second line."
    assert persona["model"] is None and persona["temperature"] is None

    started = client.post("/chat/start", json={"role": persona["key"]}).json()
    assert started["welcome_message"] == persona["welcome_message"]
    chat(client, started["session_id"], "Hello")
    assert model.requests[-1]["messages"][0] == {"role": "system", "content": V2_PROMPT}


def test_a_v1_card_maps_too(client: httpx.Client) -> None:
    persona = client.post("/roles/import", json=V1).json()
    assert persona["system_prompt"] == V1_PROMPT
    assert persona["welcome_message"] == "Arr, the user."
    assert persona["description"] == "Old Tom is a sailor."


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_a_png_card_imports_from_its_chara_chunk(client: httpx.Client, content_type: str) -> None:
    body = png(chunk(b"tEXt", b"Comment\0hello"), chunk(b"tEXt", b"chara\0" + b64(V2)))
    response = import_card(client, body, content_type)
    assert response.status_code == 201, response.text
    assert response.json()["system_prompt"] == V2_PROMPT


def test_compressed_text_chunks_are_read_and_a_ccv3_chunk_is_a_fallback(client: httpx.Client) -> None:
    z = png(chunk(b"zTXt", b"chara\0\0" + zlib.compress(b64(V1))))
    i = png(chunk(b"iTXt", b"chara\0\1\0en\0\0" + zlib.compress(b64(V1))))
    v3 = {**V2, "spec": "chara_card_v3"}
    c = png(chunk(b"tEXt", b"ccv3\0" + b64(v3)))
    for body in (z, i, c):
        response = import_card(client, body, "image/png")
        assert response.status_code == 201, response.text
    assert import_card(client, c, "image/png").json()["name"] == "Seraphina"


BOMB = png(chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * 50_000_000, 9)))


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"GIF89a not a png", "image/png", "not a PNG"),
        (b"\xff\xd8\xff\xe0 jpeg", "image/jpeg", "Only PNG"),
        (png(), "image/png", "no character card"),
        (png(chunk(b"tEXt", b"chara\0%%% not base64 %%%")), "image/png", "not valid base64"),
        (png(chunk(b"tEXt", b"chara\0" + base64.b64encode(b"{nope"))), "image/png", "not valid JSON"),
        (png(chunk(b"tEXt", b"chara\0" + b64([1, 2]))), "image/png", "not a JSON object"),
        (png()[:30], "image/png", "truncated"),
        (png(chunk(b"tEXt", b"chara\0" + b64(V1)))[:-20] + b"\0" * 20, "image/png", "damaged"),
        (BOMB, "image/png", "larger than"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2, 3]", "application/json", "not a JSON object"),
        (b'"a string"', "application/json", "not a JSON object"),
        (b"", "application/json", "Send the card"),
        (orjson.dumps({"spec": "chara_card_v2", "data": "x"}), "application/json", "'data' object"),
        (orjson.dumps({"spec": "chara_card_v9", "data": {}}), "application/json", "Unknown card spec"),
        (orjson.dumps({"spec": "chara_card_v2", "data": {"name": " "}}), "application/json", "no name"),
        (orjson.dumps({"name": 7}), "application/json", "'name' must be text"),
        (orjson.dumps({"name": "x" * 81}), "application/json", "name"),
        (orjson.dumps({"name": "Long", "first_mes": "x" * 5000}), "application/json", "first_mes (the welcome"),
        (orjson.dumps({"name": "Big", "description": "x" * 16_000}), "application/json", "(the system prompt)"),
        (
            orjson.dumps({"name": "Hot", "extensions": {"personachat": {"temperature": 9}}}),
            "application/json",
            "temperature",
        ),
    ],
)
def test_garbage_is_422_naming_the_problem(client: httpx.Client, body: bytes, content_type: str, problem: str) -> None:
    response = import_card(client, body, content_type)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("invalid_card", "invalid_request")
    assert problem in response.json()["detail"]
    assert [r["source"] for r in client.get("/roles").json()["roles"]].count("user") == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
)
def test_a_card_never_comes_as_a_form_type_a_foreign_page_could_send(client: httpx.Client, content_type: str) -> None:
    response = import_card(client, orjson.dumps(V1), content_type)
    assert response.status_code == 422 and "application/json" in response.json()["detail"]
    assert [r["source"] for r in client.get("/roles").json()["roles"]].count("user") == 0


def test_an_oversized_card_is_refused_by_its_content_length_before_it_is_read(service: Service) -> None:
    host, port = service.base_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /roles/import HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {MAX_CARD_BYTES + 1}\r\n\r\n"
        )
        sock.sendall(head.encode() + PNG_SIGNATURE)  # and nothing more: the server must not wait
        reply = sock.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 422"), reply
    assert "invalid_card" in reply and "larger than 4 MB" in reply
    assert time.monotonic() - started < 5


def test_an_oversized_card_without_a_content_length_is_refused_while_read(client: httpx.Client) -> None:
    def pieces() -> Any:
        for _ in range(5):
            yield b"\0" * (1024 * 1024)

    response = client.post("/roles/import", content=pieces(), headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and "larger than 4 MB" in response.json()["detail"]


def test_an_exported_card_imports_back_to_the_same_persona(client: httpx.Client) -> None:
    fields = {
        "name": "Round Trip",
        "system_prompt": "You are exact.\n\nKeep every line: {curly} <b>tags</b> 中文.",
        "description": "Survives export and import.",
        "welcome_message": "Hello again.",
        "model": "fake-model",  # a listed model (GET /models)
        "temperature": 0.7,
    }
    made = client.post("/roles", json=fields).json()
    card = client.get(f"/roles/{made['key']}/card").json()
    assert card["spec"] == "chara_card_v2" and card["data"]["name"] == "Round Trip"
    assert card["data"]["first_mes"] == "Hello again." and card["data"]["system_prompt"] == fields["system_prompt"]
    for body, content_type in ((orjson.dumps(card), "application/json"), (png_with_card(card), "image/png")):
        again = import_card(client, body, content_type).json()
        assert again["key"] != made["key"]
        assert {k: again[k] for k in fields} == fields
    # A built-in persona exports too, and imports as one's own copy.
    teacher = client.get("/roles/teacher/card").json()
    copy = client.post("/roles/import", json=teacher).json()
    original = client.get("/roles/teacher").json()
    assert {k: copy[k] for k in fields} == {k: original[k] for k in fields}


def test_card_fields_unit_mapping() -> None:
    assert card_fields(V2)["system_prompt"] == V2_PROMPT
    assert card_fields(V1)["system_prompt"] == V1_PROMPT
    assert card_fields({"name": "  Spaced   Name "})["name"] == "Spaced Name"


def test_a_card_imported_then_chatted_with_in_a_fresh_session(client: httpx.Client, model: FakeModel) -> None:
    body = png(chunk(b"tEXt", b"chara\0" + b64(V1)))
    key = import_card(client, body, "image/png").json()["key"]
    session_id = start_session(client)
    chat(client, session_id, "Hi", role=key)
    assert model.requests[-1]["messages"][0]["content"] == V1_PROMPT


def test_a_png_export_imports_back_too(client: httpx.Client) -> None:
    made = client.post("/roles", json={"name": "Pixel 中", "system_prompt": "You live in a PNG."}).json()
    response = client.get(f"/roles/{made['key']}/card", params={"format": "png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    assert "filename*=UTF-8''Pixel%20%E4%B8%AD.png" in response.headers["content-disposition"]
    again = import_card(client, response.content, "image/png").json()
    assert (again["name"], again["system_prompt"]) == ("Pixel 中", "You live in a PNG.")
    assert client.get(f"/roles/{made['key']}/card", params={"format": "gif"}).status_code == 422
