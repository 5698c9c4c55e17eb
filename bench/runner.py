"""The benchmark controller: starts Redis, the fake model, the bare relay and the service, runs
each scenario along three paths in the same run, and reports them side by side:

- `direct`: the load generator streams straight from the fake model (the ceiling);
- `relay`: through `bench.relay`, a bare byte relay (the floor of any Python relay's cost);
- `service`: through the chat service (sessions, history in Redis, SSE events).

    bash bench/run [--quick] [--scenario NAME ...] [--workers 1 2] [--plot] [--profile raw]

CPU time is read from /proc (psutil), in clock ticks of 10 ms: a scenario's CPU figures are
exact to 10 ms over all its turns.

Every number is from this run on this machine; what matters is the ratio to direct and relay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.hotspots import write_summary
from bench.limits import raise_open_files
from bench.report import markdown, plot, target_lines
from bench.servers import ROOT, Measurable, ModelServer, RedisServer, RelayServer, ServiceServer, Workdir

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Scenario:
    name: str
    users: int
    turns: int
    chunks: int
    delay_ms: int
    first_delay_ms: int = 0
    ping_seconds: float = 15.0
    ramp_seconds: float = 1.0
    idle: bool = False  # report memory per open stream and keep-alive pings

    @property
    def message(self) -> str:
        text = f"[[chunks={self.chunks}]] [[delay_ms={self.delay_ms}]]"
        return text + (f" [[first_delay_ms={self.first_delay_ms}]]" if self.first_delay_ms else "")


FULL = [
    Scenario("paced-c1", users=1, turns=10, chunks=50, delay_ms=20),
    Scenario("paced-c100", users=100, turns=5, chunks=50, delay_ms=20),
    Scenario("paced-c500", users=500, turns=4, chunks=50, delay_ms=20, ramp_seconds=2.0),
    Scenario("fast-c1", users=1, turns=40, chunks=200, delay_ms=0, ramp_seconds=0),
    Scenario("fast-c10", users=10, turns=30, chunks=200, delay_ms=0, ramp_seconds=0.1),
    Scenario("turn-c10", users=10, turns=40, chunks=1, delay_ms=0, ramp_seconds=0.1),
    Scenario("idle-c1000", users=1000, turns=1, chunks=5, delay_ms=0, first_delay_ms=8000, ping_seconds=1.0, idle=True),
]
QUICK = [
    Scenario("paced-c1", users=1, turns=3, chunks=50, delay_ms=20),
    Scenario("paced-c100", users=100, turns=2, chunks=50, delay_ms=20),
    Scenario("fast-c10", users=10, turns=5, chunks=200, delay_ms=0, ramp_seconds=0.1),
    Scenario("turn-c10", users=10, turns=10, chunks=1, delay_ms=0, ramp_seconds=0.1),
    Scenario("idle-c1000", users=200, turns=1, chunks=5, delay_ms=0, first_delay_ms=3000, ping_seconds=1.0, idle=True),
]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Measured:
    target: str  # "direct", "relay" or "service"
    workers: int = 0
    transport: str = "sse"  # the service's: "sse" or "ws"
    seconds: float = 0.0
    turns_ok: int = 0
    turns_planned: int = 0
    chunks: int = 0  # the model's chunks found in the answers (however many SSE events carried them)
    events: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_ms: dict[str, float | None] = field(default_factory=dict)
    turn_ms: dict[str, float | None] = field(default_factory=dict)
    pings_min: int | None = None
    cpu_seconds: float | None = None  # the relay's or the service's processes, around the turns
    cpu_us_per_chunk: float | None = None
    cpu_ms_per_turn: float | None = None
    rss_before_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_open_mb: float | None = None
    kb_per_stream: float | None = None
    redis_commands_per_turn: float | None = None
    redis_commands: dict[str, int] = field(default_factory=dict)
    messages_stored: int | None = None
    histories_checked: int = 0
    histories_ok: int = 0
    profile: str | None = None
    profile_top: str | None = None

    @property
    def turns_per_second(self) -> float:
        return self.turns_ok / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "turns_per_second": self.turns_per_second, "chunks_per_second": self.chunks_per_second}


class LoadGenerator:
    """A `bench.loadgen` process, driven through its stdin/stdout phases."""

    def __init__(self, config: dict[str, Any], log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=raise_open_files,
        )

    def expect(self, phase: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"the load generator exited before '{phase}' (see {self._log.name})")
        message: dict[str, Any] = json.loads(line)
        if message.get("phase") != phase:
            raise RuntimeError(f"the load generator said {message.get('phase')!r}, expected {phase!r}")
        return message

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send("quit")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class PeakSampler:
    """Samples a server's RSS every 100 ms in a thread; keeps the peak."""

    def __init__(self, server: Measurable) -> None:
        self._server = server
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._server.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _loadgen_config(scenario: Scenario, target: str, base_url: str, transport: str = "sse") -> dict[str, Any]:
    turn_seconds = (scenario.first_delay_ms + scenario.chunks * scenario.delay_ms) / 1000
    return {
        "target": target,
        "transport": transport,
        "base_url": base_url,
        "users": scenario.users,
        "turns": scenario.turns,
        "message": scenario.message,
        "expected_chunks": scenario.chunks,
        "ramp_seconds": scenario.ramp_seconds,
        "turn_timeout": 60.0 + 4 * turn_seconds,
        "deadline_seconds": 120.0 + scenario.turns * 6 * turn_seconds + scenario.ramp_seconds,
        "report_open": scenario.idle,
    }


def _fill(measured: Measured, report: dict[str, Any]) -> None:
    measured.seconds = report["seconds"]
    measured.turns_ok = report["turns_ok"]
    measured.turns_planned = report["turns_planned"]
    measured.chunks = report["chunks"]
    measured.events = report["events"]
    measured.errors = report["errors"]
    measured.ttft_ms = {f"p{p}": percentile(report["ttft_ms"], p) for p in (50, 95, 99)}
    measured.turn_ms = {f"p{p}": percentile(report["turn_ms"], p) for p in (50, 99)}
    if report["pings"]:
        measured.pings_min = min(report["pings"])


def run_direct(scenario: Scenario, model: ModelServer, workdir: Path) -> Measured:
    measured = Measured("direct")
    loadgen = LoadGenerator(_loadgen_config(scenario, "direct", model.url), workdir / "loadgen.log")
    try:
        loadgen.expect("ready")
        _measure_turns(scenario, loadgen, measured)
        _verify(loadgen, measured)
    finally:
        loadgen.close()
    return measured


def run_relay(scenario: Scenario, model: ModelServer, workdir: Path, profile: str | None) -> Measured:
    """The bare relay in front of the model, driven like the direct path; its process's CPU counted."""
    measured = Measured("relay")
    relay = RelayServer(workdir, model, scenario.name).start()
    loadgen: LoadGenerator | None = None
    try:
        loadgen = LoadGenerator(_loadgen_config(scenario, "direct", relay.url), workdir / "loadgen.log")
        loadgen.expect("ready")
        _measure_turns(scenario, loadgen, measured, relay, profile=_profile_path(profile, f"{scenario.name}-relay"))
        _verify(loadgen, measured)
    finally:
        if loadgen is not None:
            loadgen.close()
        relay.stop()
    return measured


def _profile_path(profile: str | None, name: str) -> tuple[str, Path] | None:
    if profile is None:
        return None
    return profile, RESULTS / f"profile-{name}.{ {'flamegraph': 'svg', 'speedscope': 'json'}.get(profile, 'txt') }"


class Profiler:
    """py-spy recording one process during the turns; for raw profiles, a top-costs summary beside."""

    def __init__(self, profile: tuple[str, Path], pid: int, measured: Measured) -> None:
        self.form, self.output = profile
        self.measured = measured
        args = ["record", "--nonblocking", "-r", "250", "-f", self.form, "-o", str(self.output), "--pid", str(pid)]
        self.process = subprocess.Popen(
            ["py-spy", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        measured.profile = str(self.output)
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        if self.form == "raw" and self.output.exists():
            title = f"{self.output.stem.removeprefix('profile-')}, pid of the {self.measured.target}"
            self.measured.profile_top = str(write_summary(self.output, title, root=f"{ROOT}/"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _measure_turns(
    scenario: Scenario,
    loadgen: LoadGenerator,
    measured: Measured,
    server: Measurable | None = None,
    redis: RedisServer | None = None,
    profile: tuple[str, Path] | None = None,
) -> None:
    """Lets the (ready) load generator run its turns; reads the server's CPU, memory and Redis
    counters right around them, and profiles its first worker if asked."""
    profiler = Profiler(profile, server.worker_pids()[0], measured) if profile and server else None
    try:
        if server is not None:
            time.sleep(0.3)
            rss_before = server.rss_bytes()
            cpu_before = server.cpu_seconds()
            sampler = PeakSampler(server)
        calls_before = redis.command_calls() if redis else {}
        loadgen.send("go")
        if scenario.idle:
            opened = loadgen.expect("open")["opened"]
            if server is not None:
                time.sleep(0.5)
                rss_open = server.rss_bytes()
                measured.rss_open_mb = rss_open / 2**20
                measured.kb_per_stream = (rss_open - rss_before) / 1024 / max(opened, 1)
        report = loadgen.expect("measured")
        if server is not None:
            measured.cpu_seconds = server.cpu_seconds() - cpu_before
            measured.rss_peak_mb = sampler.stop() / 2**20
            measured.rss_before_mb = rss_before / 2**20
        calls_after = redis.command_calls() if redis else {}
        if profiler is not None:
            profiler.stop()
    finally:
        if profiler is not None:
            profiler.kill()
    _fill(measured, report)
    if measured.cpu_seconds is not None:
        measured.cpu_us_per_chunk = measured.cpu_seconds / measured.chunks * 1e6 if measured.chunks else None
        measured.cpu_ms_per_turn = measured.cpu_seconds / measured.turns_ok * 1e3 if measured.turns_ok else None
    if redis is not None:
        delta = {name: calls_after.get(name, 0) - calls_before.get(name, 0) for name in calls_after}
        measured.redis_commands = {name: count for name, count in sorted(delta.items()) if count}
        measured.redis_commands_per_turn = sum(delta.values()) / max(measured.turns_ok, 1)


def _verify(loadgen: LoadGenerator, measured: Measured) -> None:
    loadgen.send("verify")
    verified = loadgen.expect("verified")
    measured.histories_checked = verified["histories_checked"]
    measured.histories_ok = verified["histories_ok"]


def _service_env(scenario: Scenario, redis: RedisServer, model: ModelServer, prefix: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "REDIS_PREFIX": prefix,
        "OPENAI_BASE_URL": model.url + "/v1",
        "OPENAI_API_KEY": "bench",
        "OPENAI_MODEL": "bench",
        "SECRET_KEY": "bench-" + secrets.token_hex(16),
        "RATE_LIMIT_PER_MINUTE": "0",
        "ANON_IDENTITIES_PER_MINUTE": "0",  # every simulated user is a new visitor from 127.0.0.1
        "MAX_CONCURRENT_TURNS_PER_USER": "16",
        "SSE_PING_SECONDS": str(scenario.ping_seconds),
        "LOG_LEVEL": "info",
    }


def _warm_up(url: str) -> None:
    """One short turn, so imports, pools and scripts are warm before measuring."""
    with httpx.Client(base_url=url, timeout=30) as client:
        session_id = client.post("/chat/start").json()["session_id"]
        body = {"session_id": session_id, "message": "warm up [[chunks=3]] [[delay_ms=0]]"}
        with client.stream("POST", "/chat/stream", json=body) as response:
            response.read()


def _count_messages(redis: RedisServer, prefix: str) -> int:
    with redis.client() as client:
        return sum(int(client.llen(key)) for key in client.scan_iter(match=f"{prefix}:*:m:*", count=1000))


def run_service(
    scenario: Scenario,
    redis: RedisServer,
    model: ModelServer,
    workdir: Path,
    workers: int,
    profile: str | None,
    transport: str = "sse",
) -> Measured:
    measured = Measured("service", workers=workers, transport=transport)
    prefix = "bench" + secrets.token_hex(4)
    name = f"{scenario.name}-w{workers}" + ("-ws" if transport == "ws" else "")
    service = ServiceServer(workdir, _service_env(scenario, redis, model, prefix), workers, name).start()
    loadgen: LoadGenerator | None = None
    try:
        _warm_up(service.url)
        warm_messages = _count_messages(redis, prefix)
        loadgen = LoadGenerator(_loadgen_config(scenario, "service", service.url, transport), workdir / "loadgen.log")
        loadgen.expect("ready")
        _measure_turns(scenario, loadgen, measured, service, redis, _profile_path(profile, name))
        _verify(loadgen, measured)
        measured.messages_stored = _count_messages(redis, prefix) - warm_messages
    finally:
        if loadgen is not None:
            loadgen.close()
        service.stop()
    return measured


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{psutil.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark the chat relay against the direct model.")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer users and turns")
    parser.add_argument(
        "--scenario", action="extend", nargs="+", help="run only these scenarios (repeatable); see --list"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="service worker counts to compare")
    parser.add_argument(
        "--transport",
        nargs="+",
        choices=["sse", "ws"],
        default=["sse"],
        help="how the users talk to the service: sse (POST /chat/stream), ws (GET /chat/ws, one socket per user)",
    )
    parser.add_argument("--plot", action="store_true", help="draw TTFT and throughput against concurrency (PNG)")
    parser.add_argument(
        "--profile",
        choices=["flamegraph", "speedscope", "raw"],
        help="record a py-spy profile of the relay and the (first) service worker during each scenario's turns; "
        "raw also writes the top costs of each (profile-*.top.txt)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    scenarios = QUICK if args.quick else FULL
    if args.list:
        for scenario in scenarios:
            print(f"{scenario.name}: {scenario.users} users x {scenario.turns} turns, {scenario.message}")
        return 0
    if args.scenario:
        unknown = set(args.scenario) - {s.name for s in scenarios}
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {[s.name for s in scenarios]}")
        scenarios = [s for s in scenarios if s.name in args.scenario]
    raise_open_files()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = Workdir()
    redis = RedisServer(workdir.path).start()
    model = ModelServer(workdir.path).start()
    rows: list[dict[str, Any]] = []
    try:
        for scenario in scenarios:
            print(f"== {scenario.name}: {scenario.users} users x {scenario.turns} turns ({scenario.message})")
            direct = run_direct(scenario, model, workdir.path)
            print(f"   direct : {_summary(direct)}")
            relay = run_relay(scenario, model, workdir.path, args.profile)
            print(f"   relay  : {_summary(relay)}")
            services = []
            for workers in args.workers:
                for transport in args.transport:
                    measured = run_service(scenario, redis, model, workdir.path, workers, args.profile, transport)
                    print(f"   service ({transport}): {_summary(measured)}")
                    services.append(measured)
            rows.append(
                {
                    "scenario": asdict(scenario),
                    "direct": direct.to_dict(),
                    "relay": relay.to_dict(),
                    "service": [m.to_dict() for m in services],
                }
            )
    finally:
        model.stop()
        redis.stop()
    result = {"date": stamp, "machine": machine(), "quick": args.quick, "rows": rows}
    table = markdown(result) + "\n".join(target_lines(result)) + "\n"
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"bench-{stamp}.md").write_text(table)
    (RESULTS / "latest.md").write_text(table)
    print()
    print(table)
    if args.plot:
        print(f"plot: {plot(result, RESULTS / f'bench-{stamp}.png')}")
    print(f"results: {RESULTS / f'bench-{stamp}.json'}")
    if args.profile:
        print(f"profiles: {RESULTS}/profile-*")
    workdir.cleanup()
    return 0


def _summary(m: Measured) -> str:
    text = (
        f"{m.turns_ok}/{m.turns_planned} turns, {m.chunks_per_second:.0f} chunks/s, "
        f"TTFT p50 {_ms(m.ttft_ms.get('p50'))} p99 {_ms(m.ttft_ms.get('p99'))}, errors {m.errors or 0}"
    )
    if m.cpu_us_per_chunk is not None and m.cpu_ms_per_turn is not None:
        text += f", CPU {m.cpu_us_per_chunk:.1f} us/chunk {m.cpu_ms_per_turn:.2f} ms/turn"
    if m.redis_commands_per_turn is not None:
        text += f", {m.redis_commands_per_turn:.1f} Redis cmds/turn"
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
