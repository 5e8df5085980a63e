"""The translator, event by event with no server: the bytes each format writes for each upstream
read, what the stream said, and how it ends (cleanly, cut, or with an in-band error)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from lib.aisdk import TextStream, UIMessageStream
from lib.errors import (
    RepetitiveOutput,
    UpstreamLineTooLong,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTruncated,
)
from lib.formats import Format, OpenAIChat, OpenAICompletion, WholeResponse
from lib.translate import Translator

HEAD = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'


def chunk(text: str, reason: str = "null") -> bytes:
    choice = f'[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":{reason}}}]'
    return f"data: {HEAD}{choice}}}\n\n".encode()


FORMATS: list[Callable[[], Format]] = [
    lambda: OpenAIChat(include_usage=False),
    lambda: OpenAICompletion(include_usage=False),
    UIMessageStream,
    TextStream,
    lambda: WholeResponse(shape="chat"),
]


def ui_parts(raw: bytes) -> list[str]:
    return [
        json.loads(line[6:])["type"]
        for line in raw.decode().split("\n")
        if line.startswith("data: {")
    ]


def test_chat_relays_each_event_as_it_came() -> None:
    t = Translator(OpenAIChat(include_usage=False))
    assert t.open() == b""
    assert t.feed(chunk("Hel")) == (chunk("Hel"), None)
    assert t.feed(chunk("lo", '"stop"') + b"data: [DONE]\n\n") == (chunk("lo", '"stop"'), None)
    assert t.said.done
    assert t.said.finish_reason == "stop"
    assert t.said.events == 2
    assert t.close() == b"data: [DONE]\n\n"


def test_text_writes_the_text_only() -> None:
    t = Translator(TextStream())
    out = [t.feed(chunk(text))[0] for text in ("Hel", "lo", " w\u00f6rld")]
    assert out == [b"Hel", b"lo", " w\u00f6rld".encode()]
    assert t.keepalive() is None
    assert t.fail(UpstreamProtocolError("x")) is None  # no error channel: break the connection


def test_ui_parts_in_order() -> None:
    t = Translator(UIMessageStream())
    raw = t.open() + t.feed(chunk("a"))[0] + t.feed(chunk("b", '"stop"'))[0]
    t.end()
    raw += t.close()
    assert ui_parts(raw) == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert raw.endswith(b"data: [DONE]\n\n")


def test_an_event_split_across_reads_comes_out_once_whole() -> None:
    whole = chunk("\u00e9t\u00e9")
    for cut in range(1, len(whole)):
        t = Translator(TextStream())
        first, _ = t.feed(whole[:cut])
        second, _ = t.feed(whole[cut:])
        assert (first, second) == (b"", "\u00e9t\u00e9".encode())


@pytest.mark.parametrize("make", FORMATS)
def test_upstream_error_event_ends_the_stream_with_the_key_redacted(
    make: Callable[[], Format],
) -> None:
    t = Translator(make(), secret="sk-secret-1234567890")
    error = b'data: {"error":{"message":"bad key sk-secret-1234567890"}}\n\n'
    out, failure = t.feed(chunk("a") + error + chunk("never"))
    assert isinstance(failure, UpstreamStreamError)
    assert "sk-secret" not in failure.message
    assert b"never" not in out
    assert (out == b"") == isinstance(t.format, WholeResponse)  # the event before still goes out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"data: {not json\n\n", "not valid JSON"),
        (b"data: [1]\n\n", "not a JSON object"),
        (b'data: {"choices":{}}\n\n', "choices is not a list"),
        (b"data: " + b"[" * 100_000 + b"\n\n", "nested too deeply"),
    ],
)
def test_malformed_events_are_protocol_errors(data: bytes, message: str) -> None:
    out, failure = Translator(OpenAIChat(include_usage=False)).feed(data)
    assert out == b""
    assert isinstance(failure, UpstreamProtocolError)
    assert message in failure.message


def test_a_line_over_the_limit_is_a_502_protocol_error() -> None:
    out, failure = Translator(TextStream(), max_line_bytes=64).feed(b"data: ok\n\n: " + b"x" * 100)
    assert out == b""  # the stream is dead: the event before it in the read is dropped too
    assert isinstance(failure, UpstreamLineTooLong)
    assert isinstance(failure, UpstreamProtocolError)
    assert failure.limit == 64
    assert failure.status == 502


@pytest.mark.parametrize("make", FORMATS)
def test_a_body_that_ends_before_the_answer_is_truncated(make: Callable[[], Format]) -> None:
    t = Translator(make())
    t.feed(chunk("a"))
    with pytest.raises(UpstreamTruncated):
        t.end()
    assert not t.said.done


def test_a_finish_reason_without_done_is_a_clean_end() -> None:
    t = Translator(OpenAIChat(include_usage=False))
    t.feed(chunk("a", '"length"'))
    t.end()
    assert t.said.done


def test_a_looping_model_is_cut_off() -> None:
    t = Translator(TextStream(), repetition=(64, 16))
    failure = None
    for _ in range(40):
        _, failure = t.feed(chunk("abcd "))
        if failure is not None:
            break
    assert isinstance(failure, RepetitiveOutput)


def test_usage_is_what_the_stream_said() -> None:
    t = Translator(OpenAIChat(include_usage=True))
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    out, _ = t.feed(usage)
    assert t.said.usage == {"prompt_tokens": 1, "completion_tokens": 2}
    assert out == usage


@pytest.mark.parametrize("make", FORMATS)
def test_every_format_has_its_ends(make: Callable[[], Format]) -> None:
    t = Translator(make())
    assert isinstance(t.open(), bytes)
    assert isinstance(t.close(), bytes)
    ping = t.keepalive()
    assert ping is None or ping.endswith(b"\n\n")
