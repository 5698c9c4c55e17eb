"""Character cards (SillyTavern's format): reading V1/V2 JSON and PNG cards, writing V2 JSON.

A card is untrusted input from a file a user picked, so everything here is bounded and every
problem becomes `InvalidCard` (422) with a sentence that names it; nothing here raises
anything else for bad input.

Reading a PNG (standard library only): the 8-byte signature, then chunks (length, type,
data, CRC-32, each CRC checked) up to IEND. The card is the base64 JSON text of a `chara`
chunk (`tEXt`, or `zTXt`/`iTXt` compressed or not; a `ccv3` chunk is read when there is no
`chara`). Compressed text is inflated with a bound, so a small "zip bomb" cannot use memory.

Mapping a card to a persona (the README documents it):
- name: `name`;
- system prompt: the card's `system_prompt` (`{{original}}` removed) when it has one, else
  "You are <name>."; then, each only when present and in this order, "Description:",
  "Personality:", "Scenario:" and "Example dialogue:" sections from `description`,
  `personality`, `scenario` and `mes_example`, separated by blank lines;
- welcome message: `first_mes`;
- description (the short text of the persona menu): `extensions.personachat.description`,
  else `creator_notes`, else `description`, on one line, cut to 300 characters;
- model and temperature: `extensions.personachat.model` / `.temperature`, when present;
- `{{char}}` / `<BOT>` become the name and `{{user}}` / `<USER>` become "the user", in every
  field, whatever their case.
A V2 card written by `to_card` holds the persona's system prompt alone, so it imports back
to the same persona.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from typing import Any

import orjson

from personachat.errors import InvalidCard

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 4 * 1024 * 1024  # the largest card file (JSON or PNG) accepted
MAX_TEXT_BYTES = 1024 * 1024  # the largest card text, after base64 decoding or inflating
DESCRIPTION_CHARS = 300
USER_WORDS = "the user"

_CHAR = re.compile(r"\{\{\s*char\s*\}\}|<bot>", re.IGNORECASE)
_USER = re.compile(r"\{\{\s*user\s*\}\}|<user>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
SECTIONS = (
    ("description", "Description"),
    ("personality", "Personality"),
    ("scenario", "Scenario"),
    ("mes_example", "Example dialogue"),
)


# -- reading files -------------------------------------------------------------------------


def parse_card_bytes(body: bytes, content_type: str = "") -> dict[str, Any]:
    """The card object from an uploaded body: a PNG (by type or by signature) or JSON."""
    if len(body) > MAX_CARD_BYTES:
        raise InvalidCard(f"The card file is larger than {MAX_CARD_BYTES // (1024 * 1024)} MB.")
    media = content_type.split(";")[0].strip().lower()
    if media == "image/png" or body.startswith(PNG_SIGNATURE):
        text = png_card_text(body)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidCard("The PNG's chara chunk is not valid base64.") from None
        return _json_object(raw, "The PNG's chara chunk")
    if media.startswith("image/"):
        raise InvalidCard("Only PNG images can carry a character card.")
    return _json_object(body, "The card")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_TEXT_BYTES:
        raise InvalidCard(f"{what} is larger than {MAX_TEXT_BYTES // 1024} KB.")
    try:
        card = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidCard(f"{what} is not valid JSON.") from None
    if not isinstance(card, dict):
        raise InvalidCard(f"{what} is not a JSON object.")
    return card


def png_card_text(data: bytes) -> bytes:
    """The text of the PNG's `chara` chunk (else `ccv3`); InvalidCard when there is none."""
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidCard("The file is not a PNG image.")
    found: dict[str, bytes] = {}
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise InvalidCard("The PNG is truncated.")
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 12 + length
        if end > len(data):
            raise InvalidCard("The PNG is truncated.")
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            raise InvalidCard(f"The PNG is damaged (bad checksum in a {kind.decode('latin-1')!r} chunk).")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _text_chunk(kind, body)
            if keyword in ("chara", "ccv3") and keyword not in found:
                found[keyword] = text
        if kind == b"IEND":
            break
        offset = end
    card = found.get("chara", found.get("ccv3"))
    if card is None:
        raise InvalidCard("The PNG carries no character card (no 'chara' text chunk).")
    return card


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, bytes]:
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        return "", b""
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest
    if kind == b"zTXt":
        return name, _inflate(rest[1:]) if name in ("chara", "ccv3") else b""
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text
    if len(rest) < 2:
        return "", b""
    compressed = rest[0] == 1
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed and name in ("chara", "ccv3"):
        text = _inflate(text)
    return name, text


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error:
        raise InvalidCard("The PNG's card text cannot be decompressed.") from None
    if inflater.unconsumed_tail:
        raise InvalidCard(f"The PNG's card text is larger than {MAX_TEXT_BYTES // 1024} KB.")
    return text


def png_with_card(card: dict[str, Any], image: bytes | None = None) -> bytes:
    """A PNG carrying `card` in a `chara` tEXt chunk (a 1x1 image unless one is given)."""
    base = image or _tiny_png()
    text = base64.b64encode(orjson.dumps(card))
    chunk = _chunk(b"tEXt", b"chara\0" + text)
    iend = base.rindex(b"IEND") - 4
    return base[:iend] + chunk + base[iend:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _tiny_png() -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\0\0\0\0\0")
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


# -- cards and personas ----------------------------------------------------------------------


def card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """The persona fields (name, system_prompt, description, welcome_message, model?,
    temperature?) a V2 or V1 card maps to; the caller validates their bounds."""
    if card.get("spec") in ("chara_card_v2", "chara_card_v3"):
        data = card.get("data")
        if not isinstance(data, dict):
            raise InvalidCard("A chara_card_v2 card needs its fields in a 'data' object.")
    elif "spec" in card:
        raise InvalidCard(f"Unknown card spec {str(card['spec'])[:40]!r} (expected chara_card_v2, or a V1 card).")
    else:
        data = card
    text = {field: _text(data, field) for field in ("name", "system_prompt", "first_mes", "creator_notes")}
    text.update({field: _text(data, field) for field, _ in SECTIONS})
    name = " ".join(text["name"].split())
    if not name:
        raise InvalidCard("The card has no name.")

    def fill(value: str) -> str:
        return _USER.sub(USER_WORDS, _CHAR.sub(lambda _: name, value)).strip()

    ours = _extension(data)
    own_prompt = fill(_ORIGINAL.sub("", text["system_prompt"]))
    parts = [own_prompt or f"You are {name}."]
    parts += [f"{label}:\n{fill(text[field])}" for field, label in SECTIONS if fill(text[field])]
    summary = ours.get("description") if isinstance(ours.get("description"), str) else None
    if summary is None:
        summary = text["creator_notes"] or text["description"]
    fields: dict[str, Any] = {
        "name": name,
        "system_prompt": "\n\n".join(parts),
        "description": _one_line(fill(summary), DESCRIPTION_CHARS),
        "welcome_message": fill(text["first_mes"]),
    }
    for field in ("model", "temperature"):
        if ours.get(field) is not None:
            fields[field] = ours[field]
    return fields


def to_card(persona: dict[str, Any]) -> dict[str, Any]:
    """A Character Card V2 of a persona; `card_fields` maps it back to the same persona."""
    extension = {"description": persona.get("description", "")}
    extension.update({k: persona[k] for k in ("model", "temperature") if persona.get(k) is not None})
    return {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": persona["name"],
            "description": "",
            "personality": "",
            "scenario": "",
            "first_mes": persona.get("welcome_message", ""),
            "mes_example": "",
            "creator_notes": persona.get("description", ""),
            "system_prompt": persona["system_prompt"],
            "post_history_instructions": "",
            "alternate_greetings": [],
            "tags": [],
            "creator": "",
            "character_version": "",
            "extensions": {"personachat": extension},
        },
    }


def _text(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidCard(f"The card's '{field}' must be text.")
    return value


def _extension(data: dict[str, Any]) -> dict[str, Any]:
    extensions = data.get("extensions")
    ours = extensions.get("personachat") if isinstance(extensions, dict) else None
    return ours if isinstance(ours, dict) else {}


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
