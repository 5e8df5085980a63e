"""The loop detector: catches a passage repeating back to back, never ordinary text."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import lib
from dev.demo_upstream import DEMO_REPLY, tokenize
from lib.repetition import RepetitionDetector


def feed_all(detector: RepetitionDetector, tokens: list[str]) -> tuple[int, int] | None:
    """(index of the token that tripped it, period), or None."""
    for index, token in enumerate(tokens):
        found = detector.feed(token)
        if found is not None:
            return index, found
    return None


def test_one_sentence_repeating_is_caught_after_the_window() -> None:
    sentence = "I'm sorry, I cannot do that. "  # 29 characters
    tokens = tokenize(sentence * 200)
    tripped = feed_all(RepetitionDetector(2000, 200), tokens)
    assert tripped is not None
    index, found = tripped
    assert found == len(sentence)
    # Checked every 128 characters: caught within 128 characters (and a token) of completing.
    longest_token = max(len(token) for token in tokens)
    assert len("".join(tokens[: index + 1])) < 2000 + len(sentence) + 128 + longest_token


def test_a_single_token_repeating_is_caught() -> None:
    assert feed_all(RepetitionDetector(500, 50, every=1), ["\n"] * 600) == (499, 1)
    # Checked every 128 characters by default: the first check at or after 500 is at 512.
    assert feed_all(RepetitionDetector(500, 50), ["\n"] * 600) == (511, 1)


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


def test_memory_is_bounded_by_the_period_not_the_window() -> None:
    detector = RepetitionDetector(1000, 100)
    for i in range(5000):
        detector.feed(f"{i} ")
    assert len(detector._tail) <= 100 + 32
    assert len(detector._runs) <= 100


def looping_at(text: str, window: int, max_period: int) -> int | None:
    """The definition: the smallest p <= max_period for which the last ``window`` characters
    of ``text`` repeat with period p."""
    if len(text) < window:
        return None
    w = text[len(text) - window :]
    return next((p for p in range(1, max_period + 1) if w[p:] == w[:-p]), None)


deltas = st.lists(
    st.one_of(
        st.text(alphabet="ab", min_size=1, max_size=7),  # periodic stretches come easily
        st.text(alphabet="abc \n", min_size=1, max_size=30),
        st.sampled_from(["ab", "abc", "I'm sorry. ", "\n"]).map(lambda s: s * 7),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(deltas, st.integers(2, 120), st.integers(1, 60))
def test_the_detector_agrees_with_the_definition_after_every_delta(
    tokens: list[str], window: int, max_period: int
) -> None:
    """Exact, not a heuristic: after each delta it reports what the definition says of all the
    text so far, though it keeps only the last max_period + 32 characters."""
    max_period = min(max_period, window // 2)
    detector = RepetitionDetector(window, max_period, every=1)
    text = ""
    for token in tokens:
        text += token
        assert detector.feed(token) == looping_at(text, window, max_period), (text, token)


@settings(max_examples=400, deadline=None)
@given(deltas, st.integers(2, 120), st.integers(1, 60), st.integers(2, 40))
def test_a_check_every_few_characters_agrees_with_the_definition_at_each_check(
    tokens: list[str], window: int, max_period: int, every: int
) -> None:
    """Checked once ``every`` new characters have come: at each check it reports what the
    definition says of all the text so far, and between checks nothing."""
    max_period = min(max_period, window // 2)
    detector = RepetitionDetector(window, max_period, every=every)
    text, unchecked = "", 0
    for token in tokens:
        text += token
        unchecked += len(token)
        expected = None
        if unchecked >= every:
            expected, unchecked = looping_at(text, window, max_period), 0
        assert detector.feed(token) == expected, (text, token)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(0, 3),
    st.integers(0, 60),
    st.text(alphabet="xyz", max_size=50),
    st.data(),
)
def test_a_loop_at_the_longest_periods_is_caught_exactly_when_it_completes(
    max_period: int, shorter: int, extra: int, noise: str, data: st.DataObject
) -> None:
    """Passages as long as ``max_period`` (or nearly), cut into deltas of any size: the
    shifts whose runs need the oldest characters the tail keeps."""
    p = max(1, max_period - shorter)
    passage = data.draw(st.text(alphabet="abcdefghij", min_size=p, max_size=p))
    window = 2 * max_period + extra
    text = noise + passage * (window // p + 3)
    cuts = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=10))
    detector = RepetitionDetector(window, max_period, every=1)
    fed, i = "", 0
    while len(fed) < len(text):
        token = text[len(fed) : len(fed) + cuts[i % len(cuts)]]
        fed += token
        i += 1
        assert detector.feed(token) == looping_at(fed, window, max_period), (fed, token)
