"""The history store against a real Redis: sessions, admission, the lease, the commit, deletion.

Each test has its own key prefix. The last tests put a real TCP proxy (tests/faults.py)
between the service and Redis that loses Redis's reply to one command: the command ran, the
client's retry sends it again, and the store must still do everything exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import orjson
import pytest

from personachat.errors import RateLimited, SessionNotFound, TurnInProgress
from personachat.store.client import Redis, create_redis
from personachat.store.history import _ADMIT_TURN, _COMMIT_TURN, HistoryStore, Limits
from personachat.store.keys import KeySpace
from personachat.store.turnlog import LOST_SEQ, TurnLog
from tests.conftest import Service, chat, history, start_session
from tests.faults import FaultProxy, script_sha
from tests.servers import RedisProcess
from tests.sse import iter_events

HEAD = b'{"type":"start","role":"'
USER = "alice"
LOST = b'{"type":"error","code":"turn_lost","content":"lost"}'


def limits(**overrides: int) -> Limits:
    values = {
        "history_window": 4,
        "history_max": 6,
        "history_ttl_seconds": 3600,
        "lease_ms": 2000,
        "turn_stream_ttl_seconds": 600,
        "max_concurrent_turns": 2,
        "rate_limit_per_minute": 100,
        **overrides,
    }
    return Limits(**values)


@pytest.fixture
def keys() -> KeySpace:
    return KeySpace("test" + secrets.token_hex(4))


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = create_redis(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, keys: KeySpace) -> HistoryStore:
    return HistoryStore(redis, keys, limits())


def new_turn() -> str:
    return secrets.token_hex(8)


async def admit(store: HistoryStore, session_id: str, turn_id: str, role: str | None = None) -> str:
    admission = await store.admit_turn(
        USER,
        session_id,
        turn_id,
        role=role,
        default_role="assistant",
        known_roles=["assistant", "teacher"],
    )
    # The turn's first event, as TurnService writes it once it knows the model and the context.
    log = TurnLog(store._redis, store._keys, 60)
    await log.append(
        USER, session_id, turn_id, 1, [HEAD + admission.role.encode() + b'"}'], lease_ms=int(store.lease_seconds * 1000)
    )
    return admission.role


async def commit(store: HistoryStore, session_id: str, turn_id: str, text: str, first_seq: int = 2) -> str:
    messages = [{"role": "user", "content": f"q {text}"}, {"role": "assistant", "content": text}]
    final = orjson.dumps({"type": "end", "finish_reason": "stop"})
    return await store.commit_turn(
        USER,
        session_id,
        turn_id,
        first_seq=first_seq,
        payloads=[b'{"type":"chunk","content":"x"}', final],
        messages=messages,
        role="assistant",
        title=f"q {text}",
        lost_payload=LOST,
    )


async def test_admission_takes_a_lease_and_is_safe_to_send_twice(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session = await store.create_session(USER, "teacher", None, "small")
    turn = new_turn()
    assert await admit(store, session.session_id, turn) == "teacher"  # the session's persona
    assert await admit(store, session.session_id, turn) == "teacher"  # the same admission again: ok
    assert await redis.get(keys.lock(USER, session.session_id)) == turn.encode()
    assert 0 < await redis.pttl(keys.lock(USER, session.session_id)) <= 2000  # a lease, not a 600 s lock
    entries = await redis.xrange(keys.turn(USER, session.session_id, turn))
    assert entries == [(b"0-1", {b"s": b"1", b"d": HEAD + b'teacher"}'})]  # written once (by the helper)
    admission = await store.admit_turn(
        USER, session.session_id, turn, role=None, default_role="assistant", known_roles=["assistant", "teacher"]
    )
    assert admission.model == "small"  # the session's model, chosen at POST /chat/start
    assert await redis.get(keys.rate(USER)) == b"1"  # counted once
    with pytest.raises(TurnInProgress):
        await admit(store, session.session_id, new_turn())


async def test_an_unknown_session_persona_falls_back_to_the_default_and_limits_hold(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    with pytest.raises(SessionNotFound):
        await admit(store, "0" * 32, new_turn())
    sessions = [(await store.create_session(USER, "removed-persona", None)).session_id for _ in range(3)]
    assert await admit(store, sessions[0], new_turn()) == "assistant"
    assert await admit(store, sessions[1], new_turn(), role="teacher") == "teacher"
    with pytest.raises(RateLimited):  # two running turns at most
        await admit(store, sessions[2], new_turn())


async def test_commit_appends_once_trims_and_releases_the_lease_and_slot(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session_id = (await store.create_session(USER, "assistant", None)).session_id
    for number in range(4):
        turn = new_turn()
        await admit(store, session_id, turn)
        assert await commit(store, session_id, turn, f"a{number}") == "ok"
        assert await commit(store, session_id, turn, f"a{number}") == "done"  # sent again: nothing more
    info, messages = await store.messages(USER, session_id)
    assert [m["content"] for m in messages] == ["q a1", "a1", "q a2", "a2", "q a3", "a3"]  # HISTORY_MAX 6
    assert info.title == "q a0" and info.running_turn_id is None
    assert await redis.zcard(keys.running(USER)) == 0
    stream = await redis.xrange(keys.turn(USER, session_id, turn))
    assert [entry_id for entry_id, _ in stream] == [b"0-1", b"0-3"]
    with pytest.raises(TurnInProgress):  # an ended turn's id is never admitted again
        await admit(store, session_id, turn)


async def test_commit_skips_events_a_lost_flush_reply_had_already_stored(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session_id = (await store.create_session(USER, "assistant", None)).session_id
    turn = new_turn()
    await admit(store, session_id, turn)
    key = keys.turn(USER, session_id, turn)
    await redis.xadd(key, {"s": 2, "d": b'{"type":"chunk","content":"x"}'}, id="0-2")  # flushed, reply lost
    assert await commit(store, session_id, turn, "a", first_seq=2) == "ok"  # resends seq 2 and the final 3
    entries = await redis.xrange(key)
    seqs = [(entry_id, fields[b"s"]) for entry_id, fields in entries]
    assert seqs == [(b"0-1", b"1"), (b"0-2", b"2"), (b"0-3", b"3")]
    assert entries[-1][1][b"d"] == orjson.dumps({"type": "end", "finish_reason": "stop"})


async def test_a_lease_is_renewed_only_by_its_turn_and_a_turn_without_it_stores_nothing(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session_id = (await store.create_session(USER, "assistant", None)).session_id
    turn = new_turn()
    await admit(store, session_id, turn)
    await redis.pexpire(keys.lock(USER, session_id), 100)
    assert await store.renew_lease(USER, session_id, turn) is True
    assert await redis.pttl(keys.lock(USER, session_id)) > 1000
    assert await store.renew_lease(USER, session_id, new_turn()) is False
    await redis.delete(keys.lock(USER, session_id))  # the lease ran out
    assert await store.renew_lease(USER, session_id, turn) is False
    assert await commit(store, session_id, turn, "late") == "lost"
    assert (await store.messages(USER, session_id))[1] == []
    last = (await redis.xrevrange(keys.turn(USER, session_id, turn), count=1))[0]
    lost_id = f"0-{LOST_SEQ}".encode()  # after any event its owner may have sent
    assert last == (lost_id, {b"s": str(LOST_SEQ).encode(), b"d": LOST, b"f": b"lost"})
    assert await redis.zcard(keys.running(USER)) == 0


async def test_a_dead_turn_frees_its_session_and_slot_when_its_lease_runs_out(redis: Redis, keys: KeySpace) -> None:
    store = HistoryStore(redis, keys, limits(lease_ms=300, max_concurrent_turns=1))
    first, second = [(await store.create_session(USER, "assistant", None)).session_id for _ in range(2)]
    await admit(store, first, new_turn())  # its process dies: nobody renews, nobody commits
    with pytest.raises(RateLimited):
        await admit(store, second, new_turn())
    await asyncio.sleep(0.4)
    await admit(store, first, new_turn())  # the session and the slot are free again


async def test_a_one_off_answer_shares_the_user_s_limits_by_a_slot_that_is_a_lease(
    redis: Redis, keys: KeySpace
) -> None:
    store = HistoryStore(redis, keys, limits(lease_ms=300, max_concurrent_turns=2, rate_limit_per_minute=3))
    session = (await store.create_session(USER, "assistant", None)).session_id
    await admit(store, session, new_turn())
    one_off = new_turn()
    await store.admit_one_off(USER, one_off)  # no session, no lock: only the slot and the count
    with pytest.raises(RateLimited, match="at once"):  # a turn and a one-off: two at once at most
        await store.admit_one_off(USER, new_turn())
    await asyncio.sleep(0.2)
    assert await store.renew_slot(USER, one_off)  # renewed: it outlives the turn's lease
    await asyncio.sleep(0.2)
    await store.admit_one_off(USER, new_turn())  # the turn's lease ran out, the one-off's did not
    await store.release_slot(USER, one_off)
    await store.renew_slot(USER, one_off)  # a late renewal does not take a released slot again
    assert one_off.encode() not in await redis.zrange(keys.running(USER), 0, -1)
    with pytest.raises(RateLimited, match="per minute"):  # 3 counted: the turn and 2 one-offs
        await store.admit_one_off(USER, new_turn())
    assert await redis.get(keys.rate(USER)) == b"3"  # a refused admission counts nothing


async def test_ending_a_lost_turn_writes_its_final_event_once_and_frees_the_session(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session_id = (await store.create_session(USER, "assistant", None)).session_id
    turn = new_turn()
    await admit(store, session_id, turn)
    assert await store.end_lost_turn(USER, session_id, turn, LOST, force=False) == "running"
    assert await store.end_lost_turn(USER, session_id, turn, LOST, force=True) == "lost"
    assert await store.end_lost_turn(USER, session_id, turn, LOST, force=True) == "ended"
    assert (await store.get_session(USER, session_id)).running_turn_id is None
    entries = await redis.xrange(keys.turn(USER, session_id, turn))
    assert [entry_id for entry_id, _ in entries] == [b"0-1", f"0-{LOST_SEQ}".encode()]
    assert await commit(store, session_id, turn, "too late") == "lost"  # the owner, if alive, stores nothing
    assert (await store.messages(USER, session_id))[1] == []
    await admit(store, session_id, new_turn())


async def test_delete_and_clear_refuse_while_a_turn_holds_the_session_and_commit_never_resurrects_it(
    store: HistoryStore, redis: Redis, keys: KeySpace
) -> None:
    session_id = (await store.create_session(USER, "assistant", None)).session_id
    turn = new_turn()
    await admit(store, session_id, turn)
    with pytest.raises(TurnInProgress):
        await store.delete_session(USER, session_id)
    with pytest.raises(TurnInProgress):
        await store.clear_session(USER, session_id)
    assert await commit(store, session_id, turn, "a") == "ok"
    await store.clear_session(USER, session_id)
    assert (await store.messages(USER, session_id))[1] == []

    turn = new_turn()
    await admit(store, session_id, turn)
    await redis.delete(keys.lock(USER, session_id))  # its lease ran out; then the session is deleted
    await store.delete_session(USER, session_id)
    assert await commit(store, session_id, turn, "b") == "lost"
    for key in (keys.session(USER, session_id), keys.messages(USER, session_id)):
        assert not await redis.exists(key)  # no partial session brought back
    assert await redis.zscore(keys.sessions(USER), session_id) is None
    with pytest.raises(SessionNotFound):
        await store.delete_session(USER, session_id)
    with pytest.raises(SessionNotFound):
        await store.clear_session(USER, session_id)


# -- through a proxy that loses replies -----------------------------------------------


@pytest.fixture
def proxy(redis_server: RedisProcess) -> Iterator[FaultProxy]:
    server = FaultProxy(redis_server.port).start()
    yield server
    server.stop()


def test_a_lost_commit_reply_stores_the_turn_exactly_once(
    make_service: Callable[..., Service], proxy: FaultProxy
) -> None:
    service = make_service(redis_url=proxy.url)
    with service.client() as client:
        session_id = start_session(client)
        chat(client, session_id, "warm up")  # the scripts are loaded, so the next EVALSHA runs
        proxy.drop_reply(script_sha(_COMMIT_TURN))
        events = chat(client, session_id, "[[chunks=5]]")
        assert proxy.dropped == 1
        assert events[-1].type == "end"
        stored = history(client, session_id)
        assert stored["total"] == 4  # two turns, two messages each: not 6
        assert [m["content"] for m in stored["messages"]][2] == "[[chunks=5]]"
        assert stored["running_turn_id"] is None


def test_a_lost_admission_reply_neither_refuses_the_turn_nor_leaves_a_lock(
    make_service: Callable[..., Service], proxy: FaultProxy, redis_server: RedisProcess
) -> None:
    service = make_service(redis_url=proxy.url)
    with service.client() as client:
        session_id = start_session(client)
        chat(client, session_id, "warm up")
        proxy.drop_reply(script_sha(_ADMIT_TURN))
        events = chat(client, session_id, "[[chunks=3]]")  # a 409 would fail inside chat()
        assert proxy.dropped == 1
        assert events[0].type == "start" and events[-1].type == "end"
        assert [e.id for e in events] == [f"{events[0].data['turn_id']}:{n}" for n in range(1, len(events) + 1)]
        stored = history(client, session_id)
        assert stored["total"] == 4 and stored["running_turn_id"] is None
        chat(client, session_id, "and the next one")
    raw = redis_server.client()
    assert not list(raw.scan_iter(f"{service.settings.redis_prefix}:*:lock:*"))
    assert raw.zcard(next(raw.scan_iter(f"{service.settings.redis_prefix}:*:running"), b"none")) == 0


def test_the_routes_refuse_to_delete_or_clear_a_session_while_its_turn_runs(client: httpx.Client) -> None:
    session_id = start_session(client)
    body = {"session_id": session_id, "message": "[[chunks=40]] [[delay_ms=25]]"}
    with client.stream("POST", "/chat/stream", json=body) as response:
        events = iter_events(response)
        next(events)
        for url in (f"/chat/sessions/{session_id}", f"/chat/history/{session_id}"):
            refused = client.delete(url)
            assert refused.status_code == 409 and refused.json()["code"] == "turn_in_progress"
        assert [event for event in events][-1].type == "end"
    assert history(client, session_id)["total"] == 2  # the turn was stored whole
    assert client.delete(f"/chat/sessions/{session_id}").status_code == 200
    assert client.get("/chat/history", params={"session_id": session_id}).status_code == 404
