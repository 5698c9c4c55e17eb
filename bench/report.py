"""The benchmark's report: a Markdown table (service beside the direct baseline), the
targets of issue 6 checked against this run, and an optional plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADER = (
    "| scenario | path | turns/s | chunks/s | × direct | TTFT p50 / p95 / p99 (ms) | turn p50 / p99 (ms) "
    "| errors | CPU µs/chunk | peak RSS (MB) | Redis cmds/turn | events/turn |\n"
    "| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |\n"
)


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items())) or "0"


def _row(name: str, path: str, m: dict[str, Any], direct: dict[str, Any]) -> str:
    ratio = m["chunks_per_second"] / direct["chunks_per_second"] if direct["chunks_per_second"] else None
    ttft = " / ".join(_f(m["ttft_ms"].get(p)) for p in ("p50", "p95", "p99"))
    turn = " / ".join(_f(m["turn_ms"].get(p), 0) for p in ("p50", "p99"))
    events = m["events"] / m["turns_ok"] if m["turns_ok"] else None
    return (
        f"| {name} | {path} | {_f(m['turns_per_second'])} | {_f(m['chunks_per_second'], 0)} | "
        f"{_f(ratio, 3) if path != 'direct' else '1'} | {ttft} | {turn} | {_errors(m['errors'])} | "
        f"{_f(m['cpu_us_per_chunk'])} | {_f(m['rss_peak_mb'], 0)} | {_f(m['redis_commands_per_turn'])} | "
        f"{_f(events)} |"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Run {result['date']} UTC on {result['machine']}{' (quick)' if result['quick'] else ''}.\n\n", HEADER]
    notes = []
    for row in result["rows"]:
        scenario, direct = row["scenario"], row["direct"]
        name = f"{scenario['name']} ({scenario['users']}×{scenario['turns']})"
        lines.append(_row(name, "direct", direct, direct) + "\n")
        for service in row["service"]:
            lines.append(_row(name, f"service {service['workers']}w", service, direct) + "\n")
            stored = service["messages_stored"]
            notes.append(
                f"- {scenario['name']}, {service['workers']} worker(s): {stored} messages stored for "
                f"{service['turns_ok']} turns (expected {2 * service['turns_ok']}); sample histories "
                f"{service['histories_ok']}/{service['histories_checked']} exact; Redis commands: "
                + ", ".join(f"{name} {count}" for name, count in service["redis_commands"].items())
            )
            if scenario["idle"]:
                notes.append(
                    f"  - open streams: RSS {_f(service['rss_before_mb'], 0)} MB before, "
                    f"{_f(service['rss_open_mb'], 0)} MB with {scenario['users']} streams open "
                    f"({_f(service['kb_per_stream'])} KB per stream); fewest keep-alive pings on one stream "
                    f"before its first chunk: {service['pings_min']} (every {scenario['ping_seconds']} s, "
                    f"first token after {scenario['first_delay_ms']} ms)"
                )
    return "".join(lines) + "\n" + "\n".join(notes) + "\n"


def _find(result: dict[str, Any], name: str, workers: int = 1) -> tuple[dict[str, Any], dict[str, Any]] | None:
    for row in result["rows"]:
        if row["scenario"]["name"] == name:
            for service in row["service"]:
                if service["workers"] == workers:
                    return row["direct"], service
    return None


def target_lines(result: dict[str, Any]) -> list[str]:
    """Each target of issue 6 that this run measured, with its numbers and PASS or MISS."""
    lines = ["", "Targets (1 worker):"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    found = _find(result, "paced-c100")
    if found:
        direct, service = found
        p50 = service["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]
        p99 = service["ttft_ms"]["p99"] - direct["ttft_ms"]["p99"]
        lines.append(
            f"- TTFT overhead at c=100: p50 +{p50:.1f} ms (≤ 5), p99 +{p99:.1f} ms (≤ 25): "
            f"{verdict(p50 <= 5 and p99 <= 25)}"
        )
    found = _find(result, "paced-c500")
    if found:
        direct, service = found
        ratio = service["chunks_per_second"] / direct["chunks_per_second"]
        stored = service["messages_stored"] == 2 * service["turns_ok"] == 2 * service["turns_planned"]
        ok = ratio >= 0.95 and not service["errors"] and stored
        lines.append(
            f"- throughput at c=500: {ratio:.3f} × direct (≥ 0.95), errors {_errors(service['errors'])}, "
            f"history {'complete' if stored else 'INCOMPLETE'}: {verdict(ok)}"
        )
    for name in ("fast-c1", "fast-c10"):
        found = _find(result, name)
        if found:
            cpu = found[1]["cpu_us_per_chunk"]
            lines.append(f"- CPU per relayed chunk, {name}: {cpu:.1f} µs (≤ 60): {verdict(cpu <= 60)}")
    for row in result["rows"]:
        if row["scenario"]["idle"]:
            found = _find(result, row["scenario"]["name"])
            if found:
                service = found[1]
                ok = not service["errors"] and (service["pings_min"] or 0) >= 1
                lines.append(
                    f"- {row['scenario']['users']} open streams: errors {_errors(service['errors'])}, "
                    f"fewest pings {service['pings_min']}, {_f(service['kb_per_stream'])} KB per stream: {verdict(ok)}"
                )
    for row in result["rows"]:
        for service in row["service"]:
            lines.append(
                f"- Redis commands per turn, {row['scenario']['name']} ({service['workers']}w): "
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
