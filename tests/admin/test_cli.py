"""The admin CLI (`chatctl`) on a real Redis: keys, sessions, cleanup, export and import.

The big tests seed 10,000 sessions across 250 users straight into Redis with pipelines,
using the service's own key layout (KeySpace), plus decoys: keys outside the prefix, other
users' recent sessions, and an idle session whose turn is running. They assert exact
counts, that a dry run changes nothing, that nothing outside the selection is touched, and
that a run interrupted halfway and run again finishes the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.cluster
from typer.testing import CliRunner

from config import Settings
from personachat.admin.cli import app
from personachat.store.client import create_redis
from personachat.store.keys import KeySpace
from personachat.store.maintenance import Maintenance
from tests.conftest import ROOT, Service, chat, start_session
from tests.servers import RedisProcess
from tests.store.test_cluster import RedisCluster

DAY_MS = 86_400_000
USERS = 250
PER_USER = 40  # 10,000 sessions
OLD_PER_USER = 24  # idle 100 days; the other 16 were active an hour ago


class Chatctl:
    """Runs the CLI in-process against one Redis and prefix."""

    def __init__(self, url: str, prefix: str, tmp_path: Path) -> None:
        self.env = {"REDIS_URL": url, "REDIS_PREFIX": prefix, "DATA_DIR": str(tmp_path), "REDIS_CLUSTER": "false"}
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, stdin: str | None = None) -> Any:
        result = self.runner.invoke(app, list(args), env=self.env, input=stdin)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return orjson.loads(self(*args, "--json").stdout)


@pytest.fixture
def prefix(make_settings: Callable[..., Settings]) -> str:
    return make_settings().redis_prefix


@pytest.fixture
def keys(prefix: str) -> KeySpace:
    return KeySpace(prefix)


@pytest.fixture
def chatctl(redis_server: RedisProcess, prefix: str, tmp_path: Path) -> Chatctl:
    return Chatctl(redis_server.url, prefix, tmp_path)


@pytest.fixture
def r(redis_server: RedisProcess, prefix: str) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    # The session's Redis is shared: drop this test's keys and decoys.
    leftovers = [*client.scan_iter(match=f"{prefix}*", count=5_000), b"unrelated"]
    for start in range(0, len(leftovers), 1_000):
        client.unlink(*leftovers[start : start + 1_000])
    client.close()


def sid(user: int, n: int) -> str:
    return hashlib.md5(f"{user}/{n}".encode()).hexdigest()  # 32 hex digits, like a real id


def seed(r: redis.Redis, keys: KeySpace, users: int = USERS, per_user: int = PER_USER, old: int = OLD_PER_USER) -> None:
    """Sessions laid out exactly as HistoryStore writes them, `old` of each user's idle 100 days."""
    now = time.time() * 1000
    pipe = r.pipeline(transaction=False)
    for u in range(users):
        user = f"user{u}"
        for n in range(per_user):
            session = sid(u, n)
            last = now - 100 * DAY_MS - n if n < old else now - 3_600_000 - n
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(last / 1000))
            pipe.hset(keys.session(user, session), mapping={"role": "assistant", "title": f"chat {n}",
                                                            "created_at": stamp, "last_activity": stamp})  # fmt: skip
            message = {"role": "user", "content": f"hello {n}", "timestamp": stamp, "turn_id": "0" * 16}
            pipe.rpush(
                keys.messages(user, session), orjson.dumps(message), orjson.dumps({**message, "role": "assistant"})
            )
            pipe.zadd(keys.sessions(user), {session: last})
        if u % 25 == 0:
            pipe.execute()
    pipe.execute()


def decoys(r: redis.Redis, keys: KeySpace) -> dict[bytes, bytes | None]:
    """Keys that no command may touch: other prefixes, and a lookalike without the separator."""
    other = KeySpace(keys.prefix + "x")
    names = [
        other.session("user0", sid(0, 0)).encode(),
        other.messages("user0", sid(0, 0)).encode(),
        other.turn("user0", sid(999, 0), "a" * 16).encode(),
        other.sessions("user1").encode(),
        f"{keys.prefix}-other".encode(),
        b"unrelated",
    ]
    for name in names:
        r.set(name, b"decoy")
    return {name: r.get(name) for name in names}


def all_keys(r: redis.Redis) -> set[bytes]:
    """Every key, but those about to expire by themselves: other tests share this Redis, and
    their short-lived keys (rate windows, stop flags: a minute) may vanish while this one runs."""
    names = list(r.scan_iter(count=5_000))
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.pttl(name)
        ttls = pipe.execute()
    return {name for name, ttl in zip(names, ttls, strict=True) if not 0 <= ttl < 120_000}


# -- keys ---------------------------------------------------------------------------------------


def test_keys_create_list_revoke_and_the_key_works_over_http(
    chatctl: Chatctl, make_service: Callable[..., Service]
) -> None:
    created = chatctl.json("keys", "create", "--user", "alice", "--label", "backup script")
    assert created["key"].startswith("pck_") and created["user_id"] == "alice"
    service = make_service(allow_anonymous=False)
    with service.client(headers={"Authorization": f"Bearer {created['key']}"}) as http:
        assert http.post("/chat/start").status_code == 200
        assert http.get("/chat/sessions").json()["total"] == 1

    listed = chatctl.json("keys", "list")
    assert [(k["key_id"], k["user_id"], k["label"]) for k in listed["keys"]] == [
        (created["key_id"], "alice", "backup script")
    ]
    assert created["key"] not in chatctl("keys", "list").stdout

    assert chatctl.json("keys", "revoke", created["key_id"]) == {"key_id": created["key_id"], "revoked": True}
    with service.client(headers={"Authorization": f"Bearer {created['key']}"}) as http:
        assert http.get("/chat/sessions").status_code == 401
    failed = chatctl("keys", "revoke", created["key_id"], code=1)
    assert failed.stderr.strip() == f"error: no API key with id {created['key_id']!r}"


def test_bad_input_and_an_unreachable_redis_fail_with_one_line(chatctl: Chatctl, tmp_path: Path) -> None:
    assert "invalid user id" in chatctl("keys", "create", "--user", "bad user", code=1).stderr
    assert "--idle-days" in chatctl("cleanup", code=2).stderr
    chatctl.env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = chatctl("stats", code=1)
    assert result.stderr.startswith("error: Redis is unreachable at redis://127.0.0.1:1/0")
    assert result.stderr.count("\n") == 1
    chatctl.env["REDIS_URL"] = ""
    result = chatctl("stats", code=1)
    assert "embedded Redis is not running" in result.stderr and result.stderr.count("\n") == 1


# -- cleanup of idle sessions, on 10,000 sessions ------------------------------------------------------


def test_cleanup_idle_sessions_dry_run_then_interrupted_then_resumed(
    chatctl: Chatctl, r: redis.Redis, keys: KeySpace, redis_server: RedisProcess
) -> None:
    seed(r, keys)
    kept_decoys = decoys(r, keys)
    # An idle session whose answer is being generated: never deleted.
    busy = ("user7", sid(7, 0))
    r.set(keys.lock(*busy), b"f" * 16, px=600_000)
    before = all_keys(r)
    total_idle = USERS * OLD_PER_USER

    dry = chatctl.json("cleanup", "--idle-days", "30", "--dry-run")["idle_sessions"]
    assert dry["dry_run"] is True
    assert dry["deleted"] == total_idle - 1
    assert dry["keys"] == 2 * (total_idle - 1)  # the session hash and its message list
    assert dry["bytes"] > 100 * (total_idle - 1)
    assert dry["skipped_running"] == [{"user": "user7", "session_id": sid(7, 0)}]
    assert all_keys(r) == before  # the dry run changed nothing

    # A run interrupted after three batches of 500 (as Ctrl+C would) ...
    async def interrupted() -> None:
        client = create_redis(redis_server.url)
        batches = 0

        def hook(_: int) -> None:
            nonlocal batches
            batches += 1
            if batches == 3:
                raise KeyboardInterrupt

        try:
            with pytest.raises(KeyboardInterrupt):
                await Maintenance(client, keys, history_ttl_seconds=3600).delete_sessions(
                    None, time.time() * 1000 - 30 * DAY_MS, on_batch=hook
                )
        finally:
            await client.aclose()

    asyncio.run(interrupted())
    remaining = sum(1 for _ in r.scan_iter(match=f"{keys.prefix}:{{*}}:s:*", count=5_000))
    first_run = USERS * PER_USER - remaining
    assert first_run in (1_499, 1_500)  # three batches of 500, one of them maybe the running session

    # ... and run again, finishes the job: exactly the idle sessions are gone.
    started = time.monotonic()
    done = chatctl.json("cleanup", "--idle-days", "30", "--yes")["idle_sessions"]
    elapsed = time.monotonic() - started
    assert done["deleted"] == total_idle - 1 - first_run
    assert done["skipped_running"] == [{"user": "user7", "session_id": sid(7, 0)}]
    after = all_keys(r)
    for u in range(USERS):
        for n in range(PER_USER):
            kept = n >= OLD_PER_USER or (f"user{u}", sid(u, n)) == busy
            assert (keys.session(f"user{u}", sid(u, n)).encode() in after) is kept
            assert (keys.messages(f"user{u}", sid(u, n)).encode() in after) is kept
    assert all(name in after and r.get(name) == value for name, value in kept_decoys.items())
    assert r.zcard(keys.sessions("user0")) == PER_USER - OLD_PER_USER
    assert r.zcard(keys.sessions("user7")) == PER_USER - OLD_PER_USER + 1
    assert after <= before  # nothing was written
    print(f"cleanup of {done['deleted']} idle sessions took {elapsed:.2f}s")

    # Nothing left to do: a third run deletes nothing.
    assert chatctl.json("cleanup", "--idle-days", "30", "--yes")["idle_sessions"]["deleted"] == 0


def test_cleanup_asks_for_confirmation_and_does_nothing_without_it(
    chatctl: Chatctl, r: redis.Redis, keys: KeySpace
) -> None:
    seed(r, keys, users=3, per_user=4, old=2)
    before = all_keys(r)
    result = chatctl("cleanup", "--idle-days", "30", stdin="n\n", code=1)
    assert "Delete 6 sessions idle for more than 30 days?" in result.stderr
    assert all_keys(r) == before
    chatctl("cleanup", "--idle-days", "30", stdin="y\n")
    assert len(before) - len(all_keys(r)) == 12  # 6 sessions: hash + messages


# -- orphans -----------------------------------------------------------------------------------


def test_cleanup_orphans_removes_only_what_no_session_owns(chatctl: Chatctl, r: redis.Redis, keys: KeySpace) -> None:
    seed(r, keys, users=20, per_user=10, old=0)
    kept_decoys = decoys(r, keys)
    now = int(time.time() * 1000)
    gone = [("user1", "1" * 32), ("user2", "2" * 32), ("user3", "3" * 32)]
    for user, session in gone:  # sessions deleted, leaving keys behind
        r.xadd(keys.turn(user, session, "a" * 16), {"s": 1, "d": b"{}"}, id="0-1")
        r.rpush(keys.messages(user, session), b"{}")
        r.zadd(keys.sessions(user), {session: now})
    r.xadd(keys.turn("user4", "4" * 32, "b" * 16), {"s": 1, "d": b"{}"}, id="0-1")  # turn of a gone session
    r.zadd(keys.running("user5"), {"c" * 16: now - 1_000, "d" * 16: now + 600_000})  # one expired, one live
    # Kept: a live session's turn stream, and a stream whose session is gone but whose lock is held.
    r.xadd(keys.turn("user6", sid(6, 0), "e" * 16), {"s": 1, "d": b"{}"}, id="0-1")
    r.xadd(keys.turn("user8", "8" * 32, "f" * 16), {"s": 1, "d": b"{}"}, id="0-1")
    r.set(keys.lock("user8", "8" * 32), b"f" * 16, px=600_000)
    before = all_keys(r)

    dry = chatctl.json("cleanup", "--orphans", "--dry-run")["orphans"]
    assert dry["by_kind"] == {
        "turn streams": 4,
        "message lists": 3,
        "index entries": 3,
        "expired running entries": 1,
    }
    assert dry["keys"] == 7 and dry["bytes"] > 0
    assert all_keys(r) == before

    done = chatctl.json("cleanup", "--orphans", "--yes")["orphans"]
    assert done["by_kind"] == dry["by_kind"]
    after = all_keys(r)
    assert before - after == {
        *(keys.turn(u, s, "a" * 16).encode() for u, s in gone),
        *(keys.messages(u, s).encode() for u, s in gone),
        keys.turn("user4", "4" * 32, "b" * 16).encode(),
    }
    assert r.zrange(keys.running("user5"), 0, -1) == [b"d" * 16]
    assert all(r.zscore(keys.sessions(u), s) is None for u, s in gone)
    assert r.zcard(keys.sessions("user1")) == 10
    assert all(r.get(name) == value for name, value in kept_decoys.items())
    assert chatctl.json("cleanup", "--orphans", "--yes")["orphans"]["deleted"] == 0


# -- history, sessions, export and import, stats ------------------------------------------------------


def test_history_clear_one_session_or_all_of_a_user(chatctl: Chatctl, r: redis.Redis, keys: KeySpace) -> None:
    seed(r, keys, users=3, per_user=5, old=2)
    r.set(keys.lock("user1", sid(1, 4)), b"f" * 16, px=600_000)
    assert chatctl.json("history", "clear", "--user", "user1", "--session", sid(1, 0), "--yes")["deleted"] == 1
    assert not r.exists(keys.session("user1", sid(1, 0)), keys.messages("user1", sid(1, 0)))
    busy = chatctl("history", "clear", "--user", "user1", "--session", sid(1, 4), "--yes", code=1)
    assert "being generated" in busy.stderr
    missing = chatctl("history", "clear", "--user", "user1", "--session", sid(1, 0), "--yes", code=1)
    assert missing.stderr.strip() == "error: No such session."

    result = chatctl.json("history", "clear", "--user", "user1", "--yes")
    assert result["deleted"] == 3 and result["skipped_running"] == [{"user": "user1", "session_id": sid(1, 4)}]
    assert r.zrange(keys.sessions("user1"), 0, -1) == [sid(1, 4).encode()]
    assert r.zcard(keys.sessions("user0")) == 5 and r.zcard(keys.sessions("user2")) == 5


def test_sessions_list_and_stats(chatctl: Chatctl, r: redis.Redis, keys: KeySpace) -> None:
    seed(r, keys, users=4, per_user=6, old=2)
    listed = chatctl.json("sessions", "list", "--user", "user2")
    assert listed["total"] == 6
    row = next(s for s in listed["sessions"] if s["session_id"] == sid(2, 3))
    assert (row["user"], row["title"], row["messages"]) == ("user2", "chat 3", 2)
    assert [s["last_activity"] for s in listed["sessions"]] == sorted(
        (s["last_activity"] for s in listed["sessions"]), reverse=True
    )
    idle = chatctl.json("sessions", "list", "--idle-days", "30")
    assert {(s["user"], s["session_id"]) for s in idle["sessions"]} == {
        (f"user{u}", sid(u, n)) for u in range(4) for n in range(2)
    }
    assert "chat 3" in chatctl("sessions", "list", "--user", "user2").stdout

    chatctl("keys", "create", "--user", "user0")
    stats = chatctl.json("stats")
    assert (stats["users"], stats["sessions"], stats["messages"], stats["api_keys"]) == (4, 24, 48, 1)
    assert stats["keys"] == 4 + 24 * 2 + 2 and stats["bytes"] > 0


def test_json_export_round_trips_and_markdown_reads_well(
    chatctl: Chatctl, service: Service, tmp_path: Path, redis_server: RedisProcess
) -> None:
    created = chatctl.json("keys", "create", "--user", "carol")
    with service.client(headers={"Authorization": f"Bearer {created['key']}"}) as http:
        first = start_session(http, "teacher", title="Fractions")
        chat(http, first, "What is 1/2 + 1/4?")
        chat(http, first, "And 1/3?")
        second = start_session(http)
        chat(http, second, "Hello there")
        start_session(http)  # an empty session round-trips too
        before = http.get("/chat/history", params={"session_id": first}).json()

    exported = tmp_path / "carol.json"
    chatctl("export", "--user", "carol", "--output", str(exported))
    document = orjson.loads(exported.read_bytes())
    assert len(document["sessions"]) == 3
    assert chatctl.json("history", "clear", "--user", "carol", "--yes")["deleted"] == 3
    assert chatctl.json("import", str(exported)) == {"imported": 3, "skipped_existing": 0}
    again = orjson.loads(chatctl("export", "--user", "carol").stdout)
    assert again["sessions"] == document["sessions"]
    assert chatctl.json("import", str(exported)) == {"imported": 0, "skipped_existing": 3}

    with service.client(headers={"Authorization": f"Bearer {created['key']}"}) as http:
        assert http.get("/chat/history", params={"session_id": first}).json() == before
        listed = http.get("/chat/sessions").json()
        assert {s["session_id"] for s in listed["sessions"]} == {s["session_id"] for s in document["sessions"]}
        chat(http, first, "One more")  # an imported session takes new turns

    markdown = chatctl("export", "--user", "carol", "--session", first, "--format", "markdown").stdout
    assert markdown.startswith("# Fractions\n")
    assert "## User · " in markdown and "What is 1/2 + 1/4?" in markdown and "## Assistant (teacher)" in markdown

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "personachat-export", "version": 1, "sessions": [{"user": "x y"}]}')
    assert chatctl("import", str(bad), code=1).stderr.strip() == f"error: {bad}: session #1: invalid user id"


# -- as a real process ----------------------------------------------------------------------------


def test_chatctl_runs_as_a_process(chatctl: Chatctl, r: redis.Redis, keys: KeySpace) -> None:
    seed(r, keys, users=2, per_user=3, old=1)
    python = ROOT / ".venv" / "bin" / "python"
    command = [str(python if python.exists() else sys.executable), "-m", "personachat.admin.cli"]
    env = {**os.environ, **chatctl.env}
    done = subprocess.run([*command, "cleanup", "--idle-days", "7", "--yes", "--json"], env=env, cwd=ROOT,
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["idle_sessions"]["deleted"] == 2
    shown = subprocess.run([*command, "stats"], env=env, cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert shown.returncode == 0 and b"sessions 4" in shown.stdout
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    failed = subprocess.run([*command, "keys", "list"], env=env, cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert failed.returncode == 1 and failed.stderr.startswith(b"error: Redis is unreachable")
    assert failed.stderr.count(b"\n") == 1


# -- on a Redis Cluster -------------------------------------------------------------------------------


def test_cleanup_export_and_stats_on_a_redis_cluster(tmp_path: Path) -> None:
    cluster = RedisCluster().start()
    try:
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        keys = KeySpace("clu" + secrets.token_hex(3))
        seed(client, keys, users=30, per_user=10, old=6)
        client.set(f"{keys.prefix}x:{{user0}}:s:{sid(0, 0)}", b"decoy")
        client.xadd(keys.turn("user3", "3" * 32, "a" * 16), {"s": 1, "d": b"{}"}, id="0-1")  # an orphan
        assert all(count > 0 for count in cluster.keys_per_primary(keys.prefix))  # users spread over primaries
        chatctl = Chatctl(cluster.url, keys.prefix, tmp_path)
        chatctl.env["REDIS_CLUSTER"] = "true"

        stats = chatctl.json("stats")
        assert (stats["users"], stats["sessions"], stats["messages"]) == (30, 300, 600)
        assert chatctl.json("cleanup", "--idle-days", "30", "--dry-run")["idle_sessions"]["deleted"] == 180
        assert chatctl.json("cleanup", "--orphans", "--dry-run")["orphans"]["by_kind"] == {"turn streams": 1}
        done = chatctl.json("cleanup", "--idle-days", "30", "--orphans", "--yes", "--batch-size", "50")
        assert done["idle_sessions"]["deleted"] == 180 and done["orphans"]["deleted"] == 1
        assert chatctl.json("stats")["sessions"] == 120
        assert chatctl.json("sessions", "list", "--user", "user5")["total"] == 4
        exported = chatctl("export", "--user", "user5").stdout
        assert chatctl.json("history", "clear", "--user", "user5", "--yes")["deleted"] == 4
        (tmp_path / "user5.json").write_text(exported)
        assert chatctl.json("import", str(tmp_path / "user5.json"))["imported"] == 4
        assert client.get(f"{keys.prefix}x:{{user0}}:s:{sid(0, 0)}") == b"decoy"
        client.close()
    finally:
        cluster.stop()


def test_usage_reports_the_tokens_per_user_and_model(chatctl: Chatctl, make_service: Callable[..., Service]) -> None:
    from personachat.store.usage import UsageStore

    async def record() -> None:
        client = create_redis(chatctl.env["REDIS_URL"])
        store = UsageStore(client, KeySpace(chatctl.env["REDIS_PREFIX"]), ttl_seconds=3600)
        await store.record("alice", "small", 10, 4)
        await store.record("alice", "big", 100, 40)
        await store.record("bob", "small", 1, 1)
        await client.aclose()

    asyncio.run(record())
    report = chatctl.json("usage")
    assert report["total"] == {"prompt_tokens": 111, "completion_tokens": 45, "turns": 3}
    assert report["users"]["alice"]["by_model"]["big"] == {"prompt_tokens": 100, "completion_tokens": 40, "turns": 1}
    assert set(report["users"]) == {"alice", "bob"}
    assert chatctl.json("usage", "--user", "bob")["total"] == {"prompt_tokens": 1, "completion_tokens": 1, "turns": 1}
    text = chatctl("usage").stdout
    assert "alice" in text and "big" in text and "111" in text
