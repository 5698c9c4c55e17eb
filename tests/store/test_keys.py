"""Key names: every key under the prefix, a user's keys under the user's hash tag, names
read back by `parse`, and no id able to step outside its tag or the prefix."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from personachat.store.keys import KeyName, KeySpace, is_session_id, is_turn_id, is_user_id

KEYS = KeySpace("chat")
USER, SESSION, TURN = "u-1.x@example_", "0123456789abcdef" * 2, "fedcba9876543210"


def user_keys(user: str = USER) -> dict[str, str]:
    return {
        "sessions": KEYS.sessions(user),
        "s": KEYS.session(user, SESSION),
        "m": KEYS.messages(user, SESSION),
        "lock": KEYS.lock(user, SESSION),
        "t": KEYS.turn(user, SESSION, TURN),
        "stop": KEYS.stop(user, TURN),
        "running": KEYS.running(user),
        "rate": KEYS.rate(user),
    }


def test_the_names_are_the_documented_ones() -> None:
    assert user_keys() == {
        "sessions": "chat:{u-1.x@example_}:sessions",
        "s": f"chat:{{u-1.x@example_}}:s:{SESSION}",
        "m": f"chat:{{u-1.x@example_}}:m:{SESSION}",
        "lock": f"chat:{{u-1.x@example_}}:lock:{SESSION}",
        "t": f"chat:{{u-1.x@example_}}:t:{SESSION}:{TURN}",
        "stop": f"chat:{{u-1.x@example_}}:stop:{TURN}",
        "running": "chat:{u-1.x@example_}:running",
        "rate": "chat:{u-1.x@example_}:rate",
    }
    assert KEYS.api_key("ab" * 32) == "chat:apikey:" + "ab" * 32
    assert KEYS.api_key_index() == "chat:apikeys"
    assert KEYS.stop_token() == "chat:stops"


def test_a_users_keys_share_one_cluster_slot_and_users_spread() -> None:
    """A turn's transaction touches several of its user's keys: on a cluster they must share a slot."""
    assert len({key_slot(key.encode()) for key in user_keys().values()}) == 1
    slots = {key_slot(KEYS.sessions(f"user{n}").encode()) for n in range(50)}
    assert len(slots) > 40


def test_every_key_parses_back_to_what_built_it() -> None:
    for kind, key in user_keys().items():
        parsed = KEYS.parse(key)
        assert parsed is not None and parsed.kind == kind and parsed.user == USER, key
        assert parsed.session_id == (SESSION if kind in ("s", "m", "lock", "t") else None)
        assert parsed.turn_id == (TURN if kind in ("t", "stop") else None)
    assert KEYS.parse(KEYS.api_key("ab" * 32)) == KeyName("apikey")
    assert KEYS.parse(KEYS.api_key_index()) == KeyName("apikeys")


@pytest.mark.parametrize(
    "key",
    [
        "other:{u}:sessions",  # another prefix
        "chatx:{u}:sessions",  # a prefix that only starts like ours
        "chat:{u}:unknown",
        "chat:{u}:s:not-a-session",
        f"chat:{{u}}:s:{SESSION}:extra",
        f"chat:{{u}}:t:{SESSION}",  # a turn key without its turn
        "chat:{u}:sessions:extra",
        "chat:{u:x}:sessions",  # a user id with a character ids never hold
        "chat:{}:sessions",
        "unrelated",
    ],
)
def test_parse_refuses_what_the_service_would_never_write(key: str) -> None:
    assert KEYS.parse(key) is None


@pytest.mark.parametrize(
    "user",
    [
        "",
        "a}b",  # would close the hash tag early: the key would land in another slot
        "a{b",
        "a:b",  # would look like another key kind
        "a*",  # a glob character: SCAN patterns would match other users
        "a?b",
        "a[b]",
        "a b",
        "a\nb",
        "x" * 65,
        "é",
    ],
)
def test_a_user_id_that_could_step_outside_its_tag_is_refused(user: str) -> None:
    assert not is_user_id(user)
    with pytest.raises(ValueError):
        KEYS.sessions(user)
    with pytest.raises(ValueError):
        KEYS.turn(user, SESSION, TURN)


@pytest.mark.parametrize("value", ["", "0" * 31, "0" * 33, "G" * 32, "A" * 32, "0" * 31 + "}", "*" * 32])
def test_session_ids_are_32_lowercase_hex_digits(value: str) -> None:
    assert not is_session_id(value)
    assert is_session_id("0123456789abcdef" * 2)


@pytest.mark.parametrize("value", ["", "0" * 15, "0" * 17, "g" * 16, "0" * 15 + ":", "0" * 15 + "²"])
def test_turn_ids_are_16_lowercase_hex_digits(value: str) -> None:
    assert not is_turn_id(value)
    assert is_turn_id("0123456789abcdef")


def test_patterns_stay_inside_the_prefix() -> None:
    assert KEYS.all_keys_pattern() == "chat:*"
    assert KEYS.user_indexes_pattern() == "chat:{*}:sessions"
    other = KeySpace("chat2")
    assert not other.sessions(USER).startswith("chat:")
    assert KEYS.parse(other.sessions(USER)) is None
