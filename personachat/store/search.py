"""Searching a user's own sessions: titles and message texts, case-insensitively.

Only the caller's keys are read: the session index and, for the sessions in it, their hash
and message list, all under the user's hash tag. The messages are fetched with pipelined
LRANGEs, BATCH sessions a round trip, and searched here in Python rather than in a Lua
script: `str.casefold` folds every script's case (Ä/ä, Σ/σ, ß/ss), which Lua's byte-wise
`string.lower` does not, and Redis is not held by a scan of a user's whole history. A
session's messages are parsed only when its casefolded JSON text contains the query.
Measured for 500 sessions of 100 messages of ~200 characters (tests/store/test_search.py,
one shared core): a rare word ~45 ms, a word of every message ~55 ms; a Lua script per
batch of 50 sessions doing `string.find` on `string.lower`ed messages took 86 ms and 29 ms,
holding Redis all that time, and missed non-ASCII case.

A session appears once, newest activity first: with the snippet of its most recent message
that matches (and that message's `turn_id`), else of its title.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from personachat.store.client import Redis, translate_redis_errors
from personachat.store.history import LIST_LIMIT
from personachat.store.keys import KeySpace

BATCH = 50  # sessions per pipelined round trip
SNIPPET_CHARS = 120  # around the match


@dataclass
class SearchHit:
    session_id: str
    title: str
    role: str
    last_activity: str
    snippet: str
    turn_id: str | None


class SessionSearch:
    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys

    @translate_redis_errors
    async def search(self, user: str, query: str, limit: int) -> tuple[list[SearchHit], int]:
        """The first `limit` matching sessions of `user`, newest activity first, and how many match."""
        needle = query.casefold()
        ids = [sid.decode() for sid in await self._redis.zrevrange(self._keys.sessions(user), 0, LIST_LIMIT - 1)]
        hits: list[SearchHit] = []
        total = 0
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in batch:
                    pipe.hgetall(self._keys.session(user, sid))
                    pipe.lrange(self._keys.messages(user, sid), 0, -1)
                replies = await pipe.execute()
            for sid, meta, raw in zip(batch, replies[::2], replies[1::2], strict=True):
                if not meta:
                    continue  # expired; list_sessions prunes the index
                hit = _match(sid, meta, raw, query, needle)
                if hit is None:
                    continue
                total += 1
                if len(hits) < limit:
                    hits.append(hit)
        return hits, total


def _match(session_id: str, meta: dict[bytes, bytes], raw: list[bytes], query: str, needle: str) -> SearchHit | None:
    text = {key.decode(): value.decode() for key, value in meta.items()}
    title = text.get("title", "")
    found: tuple[str, str | None] | None = None
    # The session's JSON text, casefolded once: most sessions do not hold the query at all, and
    # are passed over without parsing a message (a query with a quote, a backslash or a control
    # character is escaped in that text, so then the messages are looked at one by one).
    escaped = _escaped(query)
    if not escaped and needle not in b"\n".join(raw).decode(errors="replace").casefold():
        raw = []
    for item in reversed(raw):  # the most recent match
        if not escaped and needle not in item.decode(errors="replace").casefold():
            continue
        message: dict[str, Any] = orjson.loads(item)
        content = str(message.get("content", ""))
        at = content.casefold().find(needle)
        if at >= 0:
            found = (_snippet(content, at, len(needle)), message.get("turn_id"))
            break
    if found is None:
        at = title.casefold().find(needle)
        if at < 0:
            return None
        found = (_snippet(title, at, len(needle)), None)
    snippet, turn_id = found
    return SearchHit(session_id, title, text.get("role", ""), text.get("last_activity", ""), snippet, turn_id)


def _escaped(query: str) -> bool:
    """Whether the query holds a character that JSON escapes (so the raw text cannot show it)."""
    return any(char in query for char in '"\\') or any(ord(char) < 0x20 for char in query)


def _snippet(text: str, at: int, length: int) -> str:
    """About SNIPPET_CHARS of `text` around the match at `at`, on one line, with ellipses."""
    # casefold can change lengths (ß -> ss); the match's place in `text` is close enough.
    before = (SNIPPET_CHARS - length) // 2
    start = max(0, at - max(before, 10))
    end = min(len(text), start + max(SNIPPET_CHARS, length))
    piece = " ".join(text[start:end].split())
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")
