"""Reading Server-Sent Events the way a browser's EventSource does, for the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    id: str | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


def iter_events(response: httpx.Response) -> Iterator[Event]:
    """Parse an SSE body into events (comments such as pings are skipped)."""
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Event(event_id, json.loads("\n".join(data)))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def collect(response: httpx.Response) -> list[Event]:
    return list(iter_events(response))


def answer_text(events: list[Event]) -> str:
    return "".join(event.data["content"] for event in events if event.type == "chunk")
