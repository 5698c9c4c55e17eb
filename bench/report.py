"""The benchmark's report: a Markdown table (the three paths, direct, relay and service, side by
side per scenario), the targets of issue 14 checked against this run, and an optional plot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = (
    "| scenario | path | turns/s | chunks/s | × direct | TTFT p50 / p95 / p99 (ms) | turn p50 / p99 (ms) "
    "| errors | CPU µs/model chunk | CPU ms/turn | peak RSS (MB) | Redis cmds/turn | events/turn |\n"
    "| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
)


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items())) or "0"


def _ratio(m: dict[str, Any], direct: dict[str, Any]) -> float | None:
    return m["chunks_per_second"] / direct["chunks_per_second"] if direct["chunks_per_second"] else None


def _row(name: str, path: str, m: dict[str, Any], direct: dict[str, Any]) -> str:
    ttft = " / ".join(_f(m["ttft_ms"].get(p)) for p in ("p50", "p95", "p99"))
    turn = " / ".join(_f(m["turn_ms"].get(p), 0) for p in ("p50", "p99"))
    events = m["events"] / m["turns_ok"] if m["turns_ok"] else None
    return (
        f"| {name} | {path} | {_f(m['turns_per_second'])} | {_f(m['chunks_per_second'], 0)} | "
        f"{_f(_ratio(m, direct), 3) if path != 'direct' else '1'} | {ttft} | {turn} | {_errors(m['errors'])} | "
        f"{_f(m['cpu_us_per_chunk'])} | {_f(m.get('cpu_ms_per_turn'), 2)} | {_f(m['rss_peak_mb'], 0)} | "
        f"{_f(m['redis_commands_per_turn'])} | {_f(events)} |"
    )


def _open_streams(path: str, scenario: dict[str, Any], m: dict[str, Any]) -> str:
    return (
        f"  - {path}, open streams: RSS {_f(m['rss_before_mb'], 0)} MB before, "
        f"{_f(m['rss_open_mb'], 0)} MB with {scenario['users']} streams open "
        f"({_f(m['kb_per_stream'])} KB per stream)"
        + (
            f"; fewest keep-alive pings on one stream before its first chunk: {m['pings_min']} "
            f"(every {scenario['ping_seconds']} s, first token after {scenario['first_delay_ms']} ms)"
            if m["pings_min"] is not None
            else ""
        )
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Run {result['date']} UTC on {result['machine']}{' (quick)' if result['quick'] else ''}.\n\n", HEADER]
    notes = []
    for row in result["rows"]:
        scenario, direct, relay = row["scenario"], row["direct"], row.get("relay")
        name = f"{scenario['name']} ({scenario['users']}×{scenario['turns']})"
        lines.append(_row(name, "direct", direct, direct) + "\n")
        if relay is not None:
            lines.append(_row(name, "relay", relay, direct) + "\n")
        for service in row["service"]:
            lines.append(_row(name, _label(service), service, direct) + "\n")
            stored = service["messages_stored"]
            notes.append(
                f"- {scenario['name']}, {_label(service)}: {stored} messages stored for "
                f"{service['turns_ok']} turns (expected {2 * service['turns_ok']}); sample histories "
                f"{service['histories_ok']}/{service['histories_checked']} exact; Redis commands: "
                + ", ".join(f"{name} {count}" for name, count in service["redis_commands"].items())
            )
            if scenario["idle"]:
                if relay is not None:
                    notes.append(_open_streams("relay", scenario, relay))
                notes.append(_open_streams(_label(service), scenario, service))
            for measured in (relay, service):
                if measured is not None and measured.get("profile_top"):
                    notes.append(f"  - top costs ({measured['target']}): {measured['profile_top']}")
    return "".join(lines) + "\n" + "\n".join(notes) + "\n"


def _label(service: dict[str, Any]) -> str:
    transport = service.get("transport", "sse")
    return f"service {service['workers']}w" + ("" if transport == "sse" else f" {transport}")


def _paths(result: dict[str, Any], name: str) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]]:
    """(direct, relay, service) for each worker count that the scenario ran with."""
    for row in result["rows"]:
        if row["scenario"]["name"] == name:
            for service in row["service"]:
                if service.get("transport", "sse") == "sse":  # the targets are the streams'
                    yield row["direct"], row.get("relay"), service


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _complete(service: dict[str, Any]) -> bool:
    """No errors, every planned turn answered, every message stored, every sampled history exact."""
    stored = service["messages_stored"] == 2 * service["turns_ok"] == 2 * service["turns_planned"]
    return not service["errors"] and stored and service["histories_ok"] == service["histories_checked"]


def _floor(relay: dict[str, Any] | None, key: str, digits: int = 1) -> str:
    return f"; relay {_f(relay.get(key), digits)}" if relay is not None else ""


def target_lines(result: dict[str, Any]) -> list[str]:
    """Each target of issue 14 that this run measured, with its numbers and PASS or MISS
    (the relay's number beside it: the floor a Python relay pays on this machine)."""
    lines = ["", "Targets of issue 14 (this run):", ""]
    for _direct, relay, service in _paths(result, "paced-c100"):
        cpu, w = service["cpu_us_per_chunk"], service["workers"]
        lines.append(
            f"- CPU per paced model chunk, paced-c100 ({w}w): {_f(cpu)} µs (≤ 50{_floor(relay, 'cpu_us_per_chunk')}): "
            f"{_verdict(cpu is not None and cpu <= 50)}"
        )
    for _direct, relay, service in _paths(result, "turn-c10"):
        cpu, w = service["cpu_ms_per_turn"], service["workers"]
        lines.append(
            f"- CPU per turn, turn-c10 ({w}w): {_f(cpu, 2)} ms (≤ 1.0{_floor(relay, 'cpu_ms_per_turn', 2)}): "
            f"{_verdict(cpu is not None and cpu <= 1.0)}"
        )
    for direct, relay, service in _paths(result, "paced-c100"):
        ratio = _ratio(service, direct) or 0.0
        p50 = service["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]
        p99 = service["ttft_ms"]["p99"] - direct["ttft_ms"]["p99"]
        floor = f"; relay {_ratio(relay, direct) or 0:.3f} ×" if relay is not None else ""
        ok = ratio >= 0.95 and p99 <= 25 and _complete(service)
        lines.append(
            f"- c=100 ({service['workers']}w): {ratio:.3f} × direct (≥ 0.95{floor}), TTFT p99 {p99:+.1f} ms "
            f"(≤ +25; p50 {p50:+.1f}), errors {_errors(service['errors'])}, "
            f"history {'complete' if _complete(service) else 'INCOMPLETE'}: {_verdict(ok)}"
        )
    for direct, relay, service in _paths(result, "paced-c500"):
        ratio = _ratio(service, direct) or 0.0
        floor = f"; relay {_ratio(relay, direct) or 0:.3f} ×" if relay is not None else ""
        ok = ratio >= 0.8 and _complete(service)
        verdict = _verdict(ok) if service["workers"] == 2 else "(the target is for WORKERS=2: --workers 2)"
        lines.append(
            f"- c=500 ({service['workers']}w): {ratio:.3f} × direct (≥ 0.8{floor}), errors "
            f"{_errors(service['errors'])}, history {'complete' if _complete(service) else 'INCOMPLETE'}: {verdict}"
        )
    for name in ("fast-c1", "fast-c10"):
        for _direct, relay, service in _paths(result, name):
            cpu = service["cpu_us_per_chunk"]
            lines.append(
                f"- fast path, {name} ({service['workers']}w): {_f(cpu)} µs per model chunk "
                f"(≤ 20{_floor(relay, 'cpu_us_per_chunk')}): {_verdict(cpu is not None and cpu <= 20)}"
            )
    for row in result["rows"]:
        if row["scenario"]["idle"]:
            for _direct, relay, service in _paths(result, row["scenario"]["name"]):
                kb = service["kb_per_stream"]
                ok = not service["errors"] and (service["pings_min"] or 0) >= 1 and kb is not None and kb <= 100
                lines.append(
                    f"- {row['scenario']['users']} idle streams ({service['workers']}w): {_f(kb)} KB each "
                    f"(≤ 100{_floor(relay, 'kb_per_stream')}), errors {_errors(service['errors'])}, "
                    f"fewest pings {service['pings_min']}: {_verdict(ok)}"
                )
    for row in result["rows"]:
        for service in row["service"]:
            lines.append(
                f"- Redis commands per turn, {row['scenario']['name']} ({_label(service)}): "
                f"{_f(service['redis_commands_per_turn'])}"
            )
    return lines


def plot(result: dict[str, Any], path: Path) -> Path:
    """TTFT (p50, p99) and chunks/s against concurrency, for the paced scenarios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        (row for row in result["rows"] if row["scenario"]["name"].startswith("paced")),
        key=lambda row: row["scenario"]["users"],
    )
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    users = [row["scenario"]["users"] for row in rows]
    series = [("direct", [row["direct"] for row in rows])]
    if rows and all(row.get("relay") for row in rows):
        series.append(("relay", [row["relay"] for row in rows]))
    for index, service in enumerate(rows[0]["service"] if rows else []):
        series.append((f"service {service['workers']}w", [row["service"][index] for row in rows]))
    for label, measured in series:
        latency.plot(users, [m["ttft_ms"]["p50"] for m in measured], marker="o", label=f"{label} p50")
        latency.plot(users, [m["ttft_ms"]["p99"] for m in measured], marker="x", linestyle="--", label=f"{label} p99")
        throughput.plot(users, [m["chunks_per_second"] for m in measured], marker="o", label=label)
    for axes, title, unit in ((latency, "time to first chunk", "ms"), (throughput, "throughput", "chunks/s")):
        axes.set_xscale("log")
        axes.set_xlabel("concurrent users")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"Chat relay vs direct model — {result['date']} UTC, {result['machine']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
