"""The token estimate and the fitting of a prompt into a model's context window."""

from __future__ import annotations

import pytest

from personachat.context import MESSAGE_OVERHEAD, PROMPT_OVERHEAD, TooLongForModel, estimate_tokens, fit, message_tokens

# Real counts of OpenAI's cl100k_base tokenizer (GPT-4), for reference: the estimate must
# never be below them for ordinary text.
ENGLISH = "The quick brown fox jumps over the lazy dog, and then it runs away into the forest."  # 19 tokens
CHINESE = "我们今天去公园散步，天气非常好。"  # 16 characters; cl100k: about 17 tokens, o200k: about 9


def test_english_is_counted_at_a_token_per_three_bytes_above_the_real_count() -> None:
    assert estimate_tokens(ENGLISH) == -(-len(ENGLISH) // 3) == 28
    assert estimate_tokens(ENGLISH) >= 19
    assert estimate_tokens("") == 0 and estimate_tokens("a") == 1


def test_cjk_is_counted_a_token_per_character_not_per_byte() -> None:
    assert estimate_tokens(CHINESE) == 16  # 48 UTF-8 bytes: bytes / 3 would say the same, by chance
    assert estimate_tokens("こんにちは") == 5 and estimate_tokens("안녕하세요") == 5
    mixed = "Redis 是一个数据库"  # 6 ASCII bytes, 6 CJK characters
    assert estimate_tokens(mixed) == 6 + 2
    assert estimate_tokens("中" * 3000) == 3000


def test_other_scripts_count_their_bytes() -> None:
    assert estimate_tokens("Привет") == 4  # 12 bytes
    assert estimate_tokens("😀") == 2  # 4 bytes


def window(count: int, size: int = 30) -> list[dict[str, str]]:
    return [{"role": "user" if n % 2 == 0 else "assistant", "content": f"{n:02d}" + "x" * size} for n in range(count)]


def test_everything_fits_in_a_large_window() -> None:
    history = window(20)
    result = fit({"content": "sys"}, history, {"content": "hi"}, model="m", context_window=8192, max_output_tokens=None)
    assert result.history == history and result.context == {"messages": 20, "dropped": 0}


def test_the_oldest_messages_go_first_and_the_budget_holds() -> None:
    history = window(20)
    system, message = {"content": "You are brief."}, {"content": "the question"}
    result = fit(system, history, message, model="m", context_window=256, max_output_tokens=64)
    assert 0 < len(result.history) < 20 and result.dropped == 20 - len(result.history)
    assert result.history == history[result.dropped :]  # the newest, in order
    assert result.history[0]["role"] == "user"  # never an answer without its question
    used = sum(message_tokens(m) for m in [system, *result.history, message]) + PROMPT_OVERHEAD
    assert used == result.tokens and used + 64 <= 256


def test_a_message_that_cannot_fit_alone_is_too_long_for_the_model() -> None:
    with pytest.raises(TooLongForModel) as failure:
        fit({"content": "s"}, [], {"content": "x" * 3000}, model="tiny", context_window=1024, max_output_tokens=100)
    assert failure.value.status_code == 413 and failure.value.code == "too_long_for_model"
    assert "'tiny'" in failure.value.message
    fits = 1024 - 100 - PROMPT_OVERHEAD - 2 * MESSAGE_OVERHEAD - 1  # one token for the system prompt
    fit(
        {"content": "s"},
        window(4),
        {"content": "x" * (3 * fits)},
        model="m",
        context_window=1024,
        max_output_tokens=100,
    )
