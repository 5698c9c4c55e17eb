"""Every Redis key name the service uses, in one place.

All of a user's keys carry the hash tag `{<user>}` so that, on a Redis Cluster, they live in
one slot and a turn's multi-key transaction (messages, session, turn stream, lock) is legal.
Ids are validated before they reach a key, so no input can step outside its user's tag
or outside the prefix.

    <prefix>:{<user>}:sessions            ZSET  session id -> last activity (ms), the user's index
    <prefix>:{<user>}:s:<session>         HASH  session metadata (role, title, times, count)
    <prefix>:{<user>}:m:<session>         LIST  the session's messages, JSON, oldest first
    <prefix>:{<user>}:lock:<session>      STR   id of the turn holding the session's lease (expires)
    <prefix>:{<user>}:t:<session>:<turn>  STREAM the turn's events, for readers and resumes
    <prefix>:{<user>}:stop:<turn>         STR   a stop request for a running turn
    <prefix>:{<user>}:running             ZSET  turn id -> lease expiry (ms), the user's running turns
    <prefix>:{<user>}:rate                STR   turns started in the current rate window
    <prefix>:apikey:<sha256 of key>       HASH  an API key's user, id, label, creation time
    <prefix>:apikeys                      HASH  key id -> sha256, to list and revoke keys
    <prefix>:stops                        STR   a random token, replaced on every stop request
    <prefix>:anon:<client address>        STR   anonymous identities minted for it this minute
    <prefix>:stop-requests                (pub/sub channel) turn ids of stop requests

Personas of one's own (store/personas.py), in the user's slot like the rest of their data:

    <prefix>:{<user>}:personas            HASH  persona key -> the persona, JSON (with its times)

Idempotent sends (a send's `client_message_id`, history.py's admission), with the TTL of a
turn's stream, so a repeated id finds its turn while that turn's events are kept:

    <prefix>:{<user>}:cm:<session>:<id>   STR   the turn id the send with this id started

Token usage (store/usage.py), the user's totals, in the user's slot:

    <prefix>:{<user>}:usage               HASH  prompt_tokens, completion_tokens, turns, and the
                                                same per model as <kind>:<model id>
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
SESSION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
TURN_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
CLIENT_MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CLIENT_PATTERN = re.compile(r"[0-9A-Za-z.:/_-]{1,64}")  # an IP address or network, or a word


def is_user_id(value: str) -> bool:
    return USER_ID_PATTERN.fullmatch(value) is not None


def is_session_id(value: str) -> bool:
    return SESSION_ID_PATTERN.fullmatch(value) is not None


def is_turn_id(value: str) -> bool:
    return TURN_ID_PATTERN.fullmatch(value) is not None


def is_client_message_id(value: str) -> bool:
    return CLIENT_MESSAGE_ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class KeySpace:
    """Builds key names under one prefix; tests give each test its own prefix."""

    prefix: str

    def _user(self, user: str) -> str:
        if not is_user_id(user):
            raise ValueError(f"invalid user id {user!r}")
        return f"{self.prefix}:{{{user}}}"

    def sessions(self, user: str) -> str:
        return f"{self._user(user)}:sessions"

    def session(self, user: str, session_id: str) -> str:
        return f"{self._user(user)}:s:{session_id}"

    def messages(self, user: str, session_id: str) -> str:
        return f"{self._user(user)}:m:{session_id}"

    def lock(self, user: str, session_id: str) -> str:
        return f"{self._user(user)}:lock:{session_id}"

    def turn(self, user: str, session_id: str, turn_id: str) -> str:
        return f"{self._user(user)}:t:{session_id}:{turn_id}"

    def stop(self, user: str, turn_id: str) -> str:
        return f"{self._user(user)}:stop:{turn_id}"

    def running(self, user: str) -> str:
        return f"{self._user(user)}:running"

    def rate(self, user: str) -> str:
        return f"{self._user(user)}:rate"

    def api_key(self, key_hash: str) -> str:
        return f"{self.prefix}:apikey:{key_hash}"

    def api_key_index(self) -> str:
        return f"{self.prefix}:apikeys"

    def anonymous_mints(self, client: str) -> str:
        if CLIENT_PATTERN.fullmatch(client) is None:
            raise ValueError(f"invalid client address {client!r}")
        return f"{self.prefix}:anon:{client}"

    def stop_token(self) -> str:
        return f"{self.prefix}:stops"

    def stop_channel(self) -> str:
        """The pub/sub channel stop requests are published on (a channel, not a key)."""
        return f"{self.prefix}:stop-requests"

    # -- personas of one's own (store/personas.py) ---------------------------------------

    def personas(self, user: str) -> str:
        return f"{self._user(user)}:personas"

    # -- idempotent sends (history.py's admission) ------------------------------------------

    def client_message(self, user: str, session_id: str, client_message_id: str) -> str:
        if not is_client_message_id(client_message_id):
            raise ValueError(f"invalid client message id {client_message_id!r}")
        return f"{self._user(user)}:cm:{session_id}:{client_message_id}"

    # -- token usage (store/usage.py) -----------------------------------------------------

    def usage(self, user: str) -> str:
        return f"{self._user(user)}:usage"

    def usage_pattern(self) -> str:
        """A SCAN pattern matching every user's usage hash."""
        return f"{self.prefix}:{{*}}:usage"

    def all_keys_pattern(self) -> str:
        """A SCAN pattern matching every key of the service (and nothing outside the prefix)."""
        return f"{self.prefix}:*"

    def user_indexes_pattern(self) -> str:
        """A SCAN pattern matching every user's session index (ids hold no glob characters)."""
        return f"{self.prefix}:{{*}}:sessions"

    def parse(self, key: str) -> KeyName | None:
        """What a key of the service is, read back from its name; None for any other key."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head):
            if key == self.api_key_index():
                return KeyName("apikeys")
            if key.startswith(f"{self.prefix}:apikey:"):
                return KeyName("apikey")
            if key.startswith(f"{self.prefix}:anon:"):
                return KeyName("anon")
            return None
        user, _, rest = key[len(head) :].partition("}:")
        kind, _, tail = rest.partition(":")
        if not is_user_id(user):
            return None
        if kind in ("sessions", "running", "rate") and not tail:
            return KeyName(kind, user)
        if kind in ("s", "m", "lock") and is_session_id(tail):
            return KeyName(kind, user, session_id=tail)
        if kind == "t":
            session_id, _, turn_id = tail.partition(":")
            if is_session_id(session_id) and is_turn_id(turn_id):
                return KeyName(kind, user, session_id=session_id, turn_id=turn_id)
        if kind == "stop" and is_turn_id(tail):
            return KeyName(kind, user, turn_id=tail)
        if kind == "personas" and not tail:  # personas of one's own
            return KeyName(kind, user)
        if kind == "cm":  # idempotent sends
            session_id, _, client_id = tail.partition(":")
            if is_session_id(session_id) and is_client_message_id(client_id):
                return KeyName(kind, user, session_id=session_id)

        if kind == "usage" and not tail:  # token usage
            return KeyName(kind, user)
        return None


@dataclass(frozen=True)
class KeyName:
    """A key of the service, parsed: `kind` is the segment after the user tag (`s`, `m`,
    `lock`, `t`, `stop`, `sessions`, `running`, `rate`, `personas`, `cm`), or `apikey` / `apikeys` / `anon`."""

    kind: str
    user: str | None = None
    session_id: str | None = None
    turn_id: str | None = None
