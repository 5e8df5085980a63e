"""A cheap detector for a model stuck in a loop ("I'm sorry. I'm sorry. I'm sorry. ...").

The text is looping when its last ``window`` characters are periodic with a period of at most
``max_period``: the same passage, repeated back to back at least ``window / max_period`` times
(10 with the defaults, 2000 and 200). Exact repetition over that length does not happen in
useful text, and the test is cheap: the last 32 characters are looked up (``str.rfind``) among the
``max_period`` positions before them, and only a shift found there is checked against the whole
window (one ``memcmp``-like comparison). The tail kept is ``window + max_period`` characters, so
memory per stream is bounded whatever the model sends.
"""

from __future__ import annotations

_KEY = 32


class RepetitionDetector:
    """Feed text deltas; ``feed`` returns the period once the tail is one passage repeating."""

    __slots__ = ("_keep", "_max_period", "_tail", "_window")

    def __init__(self, window: int, max_period: int) -> None:
        if window and not 1 <= max_period <= window // 2:
            raise ValueError("max_period must be between 1 and window / 2")
        self._window = window
        self._max_period = max_period
        self._keep = window + max_period
        self._tail = ""

    def feed(self, text: str) -> int | None:
        if not text or not self._window:
            return None
        tail = self._tail + text
        if len(tail) > self._keep:
            tail = tail[-self._keep :]
        self._tail = tail
        if len(tail) < self._window:
            return None
        return period(tail, self._max_period, len(tail) - self._window)


def period(text: str, max_period: int, start: int = 0) -> int | None:
    """The smallest ``p <= max_period`` with ``w[p:] == w[:-p]`` for ``w = text[start:]``, found
    via the positions where the last few characters occur again; None if there is none. The
    window is addressed by index, not copied: this runs for every delta of every stream."""
    n = len(text)
    key_len = min(_KEY, n - start - max_period)
    if key_len <= 0:
        return None
    key = text[n - key_len :]
    low = n - key_len - max_period
    end = n - 1
    while True:
        i = text.rfind(key, low, end)
        if i < 0:
            return None
        shift = n - key_len - i
        if text[start + shift :] == text[start : n - shift]:
            return shift
        end = i + key_len - 1
