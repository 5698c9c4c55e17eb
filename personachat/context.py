"""Fitting a prompt into a model's context window, with a conservative token estimate.

No tokenizer runs here: tiktoken needs its BPE files downloaded at first use, which these
machines (and many deployments) cannot do, and providers use different tokenizers anyway.
The estimate is meant to be an upper bound for common text, so that a prompt it fits is not
refused by the provider:

- every CJK character (Han, kana, Hangul, full-width forms) counts as one token: common
  Chinese characters are one token in GPT-4's and GPT-4o's tokenizers, rarer ones more, and
  kana and Hangul usually less than one;
- all other text counts one token per three UTF-8 bytes, rounded up: English averages about
  four characters per token, so this over-counts it by a third; accented Latin, Cyrillic and
  Greek take two bytes a character;
- each message adds MESSAGE_OVERHEAD tokens (its role and the chat format's separators), and
  the prompt PROMPT_OVERHEAD (the tokens that start the answer).

`fit` keeps the newest history messages that fit beside the system prompt, the new message
and the model's `max_output_tokens`; the oldest are dropped first (and a kept answer whose
question was dropped goes too). A new message that cannot
fit even with no history is `TooLongForModel` (413), before anything is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from personachat.errors import ChatError

MESSAGE_OVERHEAD = 4
PROMPT_OVERHEAD = 3
CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3200-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]"
)


class TooLongForModel(ChatError):
    status_code = 413
    code = "too_long_for_model"

    def __init__(self, model: str, needed: int, window: int) -> None:
        super().__init__(
            f"The message is too long for the model {model!r}: about {needed} tokens with the "
            f"persona's prompt and the room kept for the answer, and the model takes {window}."
        )


def estimate_tokens(text: str) -> int:
    """A conservative token count of `text` (see the module docstring)."""
    size = len(text.encode("utf-8"))
    cjk = CJK.findall(text)
    if not cjk:
        return -(-size // 3)
    rest = size - sum(len(char.encode("utf-8")) for char in cjk)
    return len(cjk) + -(-rest // 3)


def message_tokens(message: dict[str, Any]) -> int:
    return MESSAGE_OVERHEAD + estimate_tokens(str(message.get("content", "")))


@dataclass(frozen=True)
class Fit:
    history: list[dict[str, Any]]  # the messages of the window that are sent, oldest first
    dropped: int  # the window's oldest messages left out
    tokens: int  # the estimate of the prompt sent

    @property
    def context(self) -> dict[str, int]:
        return {"messages": len(self.history), "dropped": self.dropped}


def fit(
    system: dict[str, Any],
    window: list[dict[str, Any]],
    message: dict[str, Any],
    *,
    model: str,
    context_window: int,
    max_output_tokens: int | None,
) -> Fit:
    """The newest messages of `window` that fit; TooLongForModel when `message` cannot fit alone."""
    budget = context_window - (max_output_tokens or 0) - PROMPT_OVERHEAD
    fixed = message_tokens(system) + message_tokens(message)
    if fixed > budget:
        raise TooLongForModel(model, fixed + context_window - budget, context_window)
    used = fixed
    kept = 0
    for item in reversed(window):
        cost = message_tokens(item)
        if used + cost > budget:
            break
        used += cost
        kept += 1
    history = window[len(window) - kept :] if kept else []
    if history and kept < len(window) and history[0].get("role") == "assistant":
        # An answer without its question would break the user/assistant alternation that
        # some chat templates require: it goes with the question.
        used -= message_tokens(history[0])
        history = history[1:]
    return Fit(history, len(window) - len(history), used + PROMPT_OVERHEAD)


def check_alone(system_prompt: str, message: str, *, model: str, context_window: int, max_output: int | None) -> None:
    """The check that needs no history: raises TooLongForModel before a turn is admitted."""
    fit(
        {"content": system_prompt},
        [],
        {"content": message},
        model=model,
        context_window=context_window,
        max_output_tokens=max_output,
    )
