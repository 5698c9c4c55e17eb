"""Token usage per user: the totals that `GET /usage` and `chatctl usage` report.

One hash per user, in the user's slot (`KeySpace.usage`): the user's `prompt_tokens`,
`completion_tokens` and `turns`, and the same three per model as `<field>:<model id>`.
A turn's usage is added with one atomic HINCRBY transaction after its answer is committed;
the hash's TTL is HISTORY_TTL_SECONDS, refreshed by each turn, like the user's sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from personachat.store.client import Redis, translate_redis_errors
from personachat.store.keys import KeySpace

FIELDS = ("prompt_tokens", "completion_tokens", "turns")


@dataclass
class UsageTotals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "turns": self.turns,
            "by_model": self.by_model,
        }


class UsageStore:
    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds

    @translate_redis_errors
    async def record(self, user: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Add one turn's usage to the user's totals and to the model's."""
        key = self._keys.usage(user)
        amounts = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "turns": 1}
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, amount in amounts.items():
                pipe.hincrby(key, name, amount)
                pipe.hincrby(key, f"{name}:{model}", amount)
            pipe.expire(key, self._ttl)
            await pipe.execute()

    @translate_redis_errors
    async def totals(self, user: str) -> UsageTotals:
        raw = await self._redis.hgetall(self._keys.usage(user))
        return parse_totals({name.decode(): int(value) for name, value in raw.items()})


def parse_totals(values: dict[str, int]) -> UsageTotals:
    totals = UsageTotals(values.get("prompt_tokens", 0), values.get("completion_tokens", 0), values.get("turns", 0))
    for name, amount in values.items():
        kind, _, model = name.partition(":")
        if model and kind in FIELDS:
            totals.by_model.setdefault(model, dict.fromkeys(FIELDS, 0))[kind] = amount
    return totals
