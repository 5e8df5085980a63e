"""The relay's fast path for plain content chunks (no ``json.loads``) must say and write exactly
what the slow path does: same bytes, same finish reason and usage, same in-band errors."""

from __future__ import annotations

import pytest

from lib.errors import APIError
from lib.formats import Format, OpenAIChat, OpenAICompletion
from lib.relay import _ContentTemplate, _Outcome, _translate_events
from lib.sse import Event

HEAD = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
USAGE = '{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'


def content(text: str, *, reason: str = "null", usage: str = "null") -> str:
    choice = f'[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":{reason}}}]'
    return f'{HEAD}{choice},"usage":{usage}}}'


STREAM = [
    content("Hello"),  # learns the template
    content(" world"),
    content(" sch\u00f6n \U0001f680"),  # raw UTF-8, as OpenAI sends it
    content(" \\u00f6"),  # escaped: slow path
    content(' \\"quoted\\"'),  # escaped quotes: slow path
    content('x","finish_reason":"stop"}],"usage":null,"x":"'),  # injection attempt
    content("tab\there"),  # a raw control character: invalid JSON
    content(" ok"),
    content("", reason='"length"'),
    f'{HEAD}[],"usage":{USAGE}}}',
    content(" after"),
    '{"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    '[{"index":0,"delta":{"content":"new id"},"finish_reason":null}],"usage":null}',
    content('broken"'),
    '{"error":{"message":"boom","type":"server_error"}}',
    "[DONE]",
]


def run(fmt: Format, datas: list[str], *, fast: bool) -> tuple[list[object], _Outcome]:
    """Feed each event in its own read; return per-read (bytes, error type) and the outcome."""
    outcome = _Outcome()
    template = _ContentTemplate()
    seen: list[object] = []
    for data in datas:
        if not fast:
            template = _ContentTemplate()  # never learned: every chunk is parsed
        out, failure = _translate_events([Event(data)], fmt, outcome, "sk-x", template)
        seen.append((out, None if failure is None else (type(failure), failure.message)))
        if outcome.done:
            break
    return seen, outcome


@pytest.mark.parametrize("make", [OpenAIChat, OpenAICompletion])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("start", range(len(STREAM)))
def test_fast_path_matches_slow_path(
    make: type[OpenAIChat], include_usage: bool, start: int
) -> None:
    datas = STREAM[start:] + STREAM[:start]
    fast, fast_outcome = run(make(include_usage=include_usage), datas, fast=True)
    slow, slow_outcome = run(make(include_usage=include_usage), datas, fast=False)
    assert fast == slow
    for name in ("done", "events", "finish_reason", "usage"):
        assert getattr(fast_outcome, name) == getattr(slow_outcome, name), name


def test_fast_path_is_taken_for_plain_chunks() -> None:
    template = _ContentTemplate()
    outcome = _Outcome()
    fmt = OpenAIChat(include_usage=False)
    _translate_events([Event(content("Hello"))], fmt, outcome, None, template)
    assert template.like is not None
    assert template.match(content(" more text")) == " more text"
    assert template.match(content("x", reason='"stop"')) is None
    assert template.match(content("a\\nb")) is None
    assert template.match(content('a"b')) is None
    assert template.match(content("x", usage=USAGE)) is None


def test_in_band_error_still_detected_after_template() -> None:
    outcome = _Outcome()
    template = _ContentTemplate()
    fmt = OpenAIChat(include_usage=False)
    events = [Event(content("a")), Event(content("b")), Event('{"error":{"message":"x"}}')]
    out, failure = _translate_events(events, fmt, outcome, None, template)
    assert isinstance(failure, APIError)
    assert out == b"".join(b"data: " + content(t).encode() + b"\n\n" for t in "ab")


@pytest.mark.parametrize("start", range(len(STREAM)))
def test_fast_path_matches_slow_path_ai_formats(start: int) -> None:
    from lib.aisdk import TextStream, UIMessageStream

    datas = STREAM[start:] + STREAM[:start]
    for make in (UIMessageStream, TextStream):
        fast, fast_outcome = run(make(), datas, fast=True)
        slow, slow_outcome = run(make(), datas, fast=False)
        assert fast == slow, make
        assert fast_outcome.events == slow_outcome.events
