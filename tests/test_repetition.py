"""The loop detector: catches a passage repeating back to back, never ordinary text."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import lib
from dev.demo_upstream import DEMO_REPLY, tokenize
from lib.repetition import RepetitionDetector, period


def feed_all(detector: RepetitionDetector, tokens: list[str]) -> tuple[int, int] | None:
    """(index of the token that tripped it, period), or None."""
    for index, token in enumerate(tokens):
        found = detector.feed(token)
        if found is not None:
            return index, found
    return None


def test_one_sentence_repeating_is_caught_after_the_window() -> None:
    sentence = "I'm sorry, I cannot do that. "  # 29 characters
    tripped = feed_all(RepetitionDetector(2000, 200), tokenize(sentence * 200))
    assert tripped is not None
    index, found = tripped
    assert found == len(sentence)
    assert len("".join(tokenize(sentence * 200)[: index + 1])) < 2000 + len(sentence)


def test_a_single_token_repeating_is_caught() -> None:
    assert feed_all(RepetitionDetector(500, 50), ["\n"] * 600) == (499, 1)


def test_a_passage_longer_than_max_period_is_not_a_loop() -> None:
    passage = "".join(chr(ord("a") + i % 26) + str(i) for i in range(100))  # ~290 characters
    assert feed_all(RepetitionDetector(2000, 200), [passage] * 20) is None


def test_ordinary_text_is_never_a_loop() -> None:
    # Prose and code with their usual local repetition (rulers, similar lines): ~100 KB.
    text = "".join(path.read_text() for path in sorted(Path(lib.__file__).parent.glob("*.py")))
    assert len(text) > 50_000
    assert feed_all(RepetitionDetector(2000, 200), tokenize(text + DEMO_REPLY)) is None


def test_disabled_detector_sees_nothing() -> None:
    assert feed_all(RepetitionDetector(0, 1), ["a"] * 10_000) is None


def test_memory_is_bounded_by_window_and_period() -> None:
    detector = RepetitionDetector(1000, 100)
    for i in range(5000):
        detector.feed(f"{i} ")
    assert len(detector._tail) <= 1100


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=400), st.integers(1, 40))
def test_period_agrees_with_the_definition(text: str, max_period: int) -> None:
    found = period(text, max_period)
    brute = next(
        (p for p in range(1, min(max_period, len(text) - 1) + 1) if text[p:] == text[:-p]), None
    )
    if len(text) - max_period < 1:
        assert found is None
    else:
        assert found == brute
