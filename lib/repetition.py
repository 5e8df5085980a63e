"""A cheap detector for a model stuck in a loop ("I'm sorry. I'm sorry. I'm sorry. ...").

The text is looping when its last ``window`` characters are periodic with a period of at most
``max_period``: the same passage, repeated back to back at least ``window / max_period`` times
(10 with the defaults, 2000 and 200). Exact repetition over that length does not happen in
useful text.

Nothing like the whole window is kept. For a shift ``s`` the *run* is how many of the last
characters equal the one ``s`` before them; the last ``window`` characters have period ``s``
exactly when the run reaches ``window - s``. A shift becomes a candidate when the last few
characters (the key) occur again ``s`` back, which every shift with a run as long as the key
does; from then on each delta extends its run (one comparison of the delta with the text ``s``
before it) or cuts it, and a candidate whose run falls below the key's length is dropped until
the key finds it again. When that happens the run is shorter than the key plus the delta, so the
last ``max_period + key`` characters and the delta always hold all of it: that is the whole
tail kept, and the runs are exact, not estimates. In ordinary text there is rarely a candidate,
and a check costs one search for the key in those few hundred characters.

A check runs once ``every`` new characters have come (128 by default), not on every delta: a
model's delta is a token of a few characters, and the check costs about the same for one
character as for a hundred (it searches the few hundred kept), so checking every token was
most of the relay's own work per token; 128 is a few dozen tokens, against a window of 2000.
The answer at a check is exact; a loop is reported at most ``every - 1`` characters (plus the
delta that brings them) after the window became periodic.
"""

from __future__ import annotations

_KEY = 32
_EVERY = 128


class RepetitionDetector:
    """Feed text deltas; ``feed`` returns the period once the tail is one passage repeating."""

    __slots__ = ("_every", "_keep", "_key", "_max_period", "_pending", "_runs", "_tail", "_window")

    def __init__(self, window: int, max_period: int, *, every: int = _EVERY) -> None:
        if window and not 1 <= max_period <= window // 2:
            raise ValueError("max_period must be between 1 and window / 2")
        if every < 1:
            raise ValueError("every must be at least 1")
        self._window = window
        self._every = every
        self._pending = ""  # characters not checked yet, fewer than ``every``
        self._max_period = max_period
        # Every shift that can complete a window has a run of at least window - max_period.
        self._key = min(_KEY, window - max_period)
        self._keep = max_period + self._key
        self._tail = ""
        self._runs: dict[int, int] = {}  # candidate shift -> its run

    def feed(self, text: str) -> int | None:
        if not text or not self._window:
            return None
        pending = self._pending
        if pending:
            text = pending + text
        if len(text) < self._every:
            self._pending = text
            return None
        self._pending = ""
        return self._check(text)

    def _check(self, text: str) -> int | None:
        """The period, if the tail with ``text`` added is one passage repeating."""
        tail = self._tail + text
        n, m = len(tail), len(text)
        runs = self._runs
        if runs:  # in ordinary text, almost never
            for shift, run in list(runs.items()):
                if tail[n - m :] == tail[n - m - shift : n - shift]:
                    runs[shift] = run + m
                else:
                    cut = _run(tail, shift, m)
                    if cut < self._key:
                        del runs[shift]
                    else:
                        runs[shift] = cut
        key_len = self._key
        if n > key_len:  # new candidates: the shifts at which the key occurs again
            key = tail[n - key_len :]
            low = max(0, n - key_len - self._max_period)
            end = n - 1
            while (i := tail.rfind(key, low, end)) >= 0:
                shift = n - key_len - i
                if shift not in runs:
                    runs[shift] = _run(tail, shift, n - shift)
                end = i + key_len - 1
        self._tail = tail[-self._keep :] if n > self._keep else tail
        if not runs:
            return None
        window = self._window
        found = [shift for shift, run in runs.items() if run >= window - shift]
        return min(found) if found else None


def _run(text: str, shift: int, most: int) -> int:
    """How many of ``text``'s last characters (at most ``most``) equal the one ``shift`` before
    each: the longest common suffix of ``text`` and ``text`` moved by ``shift``, found by
    halving (slices compare with memcmp)."""
    n = len(text)
    most = min(most, n - shift)
    low, high = 0, most  # the run is at least low and at most high
    while low < high:
        mid = (low + high + 1) // 2
        if text[n - mid :] == text[n - mid - shift : n - shift]:
            low = mid
        else:
            high = mid - 1
    return low
