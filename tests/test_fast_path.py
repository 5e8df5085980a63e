"""The translator's fast path for plain content chunks (no ``json.loads``) must say and write
exactly what the slow path does: same bytes, same finish reason and usage, same in-band errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from lib.errors import APIError
from lib.formats import Format, OpenAIChat, OpenAICompletion
from lib.sse import Event, encode_json
from lib.translate import ContentTemplate, Said, Translator

HEAD = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
USAGE = '{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'


def sse(data: str) -> bytes:
    """``data`` as one event of its own, the way one upstream read carries it."""
    return b"data: " + data.encode() + b"\n\n"


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


def run(fmt: Format, datas: list[str], *, fast: bool) -> tuple[list[object], Said]:
    """Feed each event in its own read; return per-read (bytes, error type) and the outcome."""
    translator = Translator(fmt, secret="sk-x")
    outcome = translator.said
    seen: list[object] = []
    for data in datas:
        if not fast:
            translator.template = ContentTemplate()  # never learned: every chunk is parsed
        out, failure = translator.feed_events([Event(data)])
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
    translator = Translator(OpenAIChat(include_usage=False))
    translator.feed_events([Event(content("Hello"))])
    template = translator.template
    assert template.learned
    assert template.match(sse(content(" more text"))) == " more text"
    assert template.match(sse(content("x", reason='"stop"'))) is None
    assert template.match(sse(content("a\\nb"))) is None
    assert template.match(sse(content('a"b'))) is None
    assert template.match(sse(content("x", usage=USAGE))) is None


def test_in_band_error_still_detected_after_template() -> None:
    translator = Translator(OpenAIChat(include_usage=False))
    events = [Event(content("a")), Event(content("b")), Event('{"error":{"message":"x"}}')]
    out, failure = translator.feed_events(events)
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


# The chunks as OpenAI sends them: more fields that say nothing, and a random padding string in
# every chunk (``obfuscation``, on by default), which the template's second hole takes.
REAL_HEAD = (
    '{"id":"chatcmpl-C3jm","object":"chat.completion.chunk","created":1755007032,'
    '"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_7eeb46f068",'
    '"choices":'
)


def real(
    text: str, *, pad: str = "x1", reason: str = "null", usage: str = "null", logprobs: str = "null"
) -> str:
    choice = (
        f'[{{"index":0,"delta":{{"content":"{text}"}},"logprobs":{logprobs},'
        f'"finish_reason":{reason}}}]'
    )
    return f'{REAL_HEAD}{choice},"usage":{usage},"obfuscation":"{pad}"}}'


REAL_STREAM = [
    real("Hello", pad="a"),  # learns the template with its padding hole
    real(" world", pad="Xy3kP0qZ"),
    real(" sch\u00f6n \U0001f680", pad="bb"),  # raw UTF-8: re-encoded, the padding with it
    real(" more", pad=""),  # empty padding
    real(" pad", pad='x\\"y'),  # an escaped quote in the padding: slow path
    real('x","obfuscation":"', pad="z"),  # injection attempt through the text
    real("x", pad='z","finish_reason":"stop'),  # and through the padding
    real(" t", logprobs='{"content":[]}'),  # logprobs that say something: slow path
    real("tab\there", pad="c"),  # a raw control character: invalid JSON
    real(" p", pad="tab\tpad"),  # in the padding too
    real(" ok", pad="Q"),
    real("", reason='"stop"'),
    f'{REAL_HEAD}[],"usage":{USAGE},"obfuscation":"q"}}',
    real(" after", pad="w"),
    "[DONE]",
]


@pytest.mark.parametrize("start", range(len(REAL_STREAM)))
def test_fast_path_matches_slow_path_for_chunks_as_openai_sends_them(start: int) -> None:
    from lib.aisdk import TextStream, UIMessageStream

    datas = REAL_STREAM[start:] + REAL_STREAM[:start]
    makers: list[Callable[[], Format]] = [
        lambda: OpenAIChat(include_usage=True),
        lambda: OpenAIChat(include_usage=False),
        lambda: OpenAICompletion(include_usage=False),
        UIMessageStream,
        TextStream,
    ]
    for make in makers:
        fast, fast_outcome = run(make(), datas, fast=True)
        slow, slow_outcome = run(make(), datas, fast=False)
        assert fast == slow, make()
        for name in ("done", "events", "finish_reason", "usage"):
            assert getattr(fast_outcome, name) == getattr(slow_outcome, name), name


def test_fast_path_is_taken_for_chunks_as_openai_sends_them() -> None:
    translator = Translator(OpenAIChat(include_usage=False))
    translator.feed_events([Event(real("Hello", pad="a"))])
    template = translator.template
    assert template.learned
    assert template.padded
    assert template.match(sse(real(" more text", pad="Zz9Q"))) == " more text"
    assert template.match(sse(real(" more", pad=""))) == " more"
    assert template.match(sse(real("x", pad='a\\"b'))) is None
    assert template.match(sse(real("x", logprobs='{"content":[]}'))) is None
    assert template.match(sse(real("x", reason='"stop"'))) is None
    assert template.match(sse(real("x", usage=USAGE))) is None
    # As it is, padding and all: the same bytes the upstream sent.
    out, failure = translator.feed_events([Event(real(" again", pad="p4d"))])
    assert (out, failure) == (b"data: " + real(" again", pad="p4d").encode() + b"\n\n", None)


def test_non_ascii_text_in_a_padded_chunk_is_escaped_without_parsing() -> None:
    """Raw UTF-8 text (as OpenAI sends it) makes a chunk non-canonical; when the rest of its JSON
    is canonical, the chat format escapes that string alone: what encode_json writes for it,
    padding included, with no parse."""
    translator = Translator(OpenAIChat(include_usage=False))
    translator.feed_events([Event(real("Hello", pad="a"))])
    template = translator.template
    assert template.canonical
    data = real(" sch\u00f6n \U0001f680", pad="Zq9")
    text = template.match(sse(data))
    assert text == " sch\u00f6n \U0001f680"
    out = OpenAIChat(include_usage=False).delta(sse(data), text, template)
    assert out == encode_json(json.loads(data))
    assert b"\\u00f6" in out
    assert b'"obfuscation":"Zq9"' in out


def test_a_plain_chat_read_is_relayed_as_the_bytes_that_came() -> None:
    """One read, one canonical plain chunk: the chat format writes that read itself (no decode
    and re-encode of the event), and the stream still learns what the text said."""
    translator = Translator(OpenAIChat(include_usage=False), repetition=(40, 4))
    translator.feed(sse(real("Hello", pad="a")))
    read = sse(real(" more", pad="Zz9Q"))
    out, failure = translator.feed(read)
    assert failure is None
    assert out is read
    # The text still reaches the loop detector: the same token over and over is cut off.
    failures = [translator.feed(sse(real("ab", pad="p")))[1] for _ in range(60)]
    assert any(isinstance(f, APIError) and f.type == "repetitive_output" for f in failures)


def test_invalid_utf8_in_a_plain_read_is_decoded_as_the_slow_path_decodes_it() -> None:
    """Bytes that are not UTF-8 in the text of a read that matches the template: the read takes
    the slow path, which decodes them with replacement characters."""
    learned = Translator(OpenAIChat(include_usage=False))
    learned.feed(sse(real("Hello", pad="a")))
    assert learned.template.learned
    fresh = Translator(OpenAIChat(include_usage=False))
    fresh.feed(sse(real("Hello", pad="a")))
    fresh.template = ContentTemplate()
    read = sse(real(" ok", pad="pp")).replace(b" ok", b" o\xffk")
    out, failure = learned.feed(read)
    assert failure is None
    assert out == fresh.feed(read)[0]
    assert b"\\ufffd" in out


def test_a_chunk_whose_json_spans_lines_gets_no_template() -> None:
    """An event whose data is several lines is one JSON text with line breaks in it: no single
    line of a later read could be that event, so it is not a template."""
    translator = Translator(OpenAIChat(include_usage=False))
    data = real("Hello", pad="a").replace('"choices":', '\n"choices":')
    out, failure = translator.feed(b"data: " + data.replace("\n", "\ndata: ").encode() + b"\n\n")
    assert failure is None
    assert out == encode_json(json.loads(data))
    assert not translator.template.learned


def test_a_stream_whose_chunks_keep_changing_shape_stops_learning_them() -> None:
    """Each new shape of the JSON after the string costs a pattern compilation: a stream gets
    eight, then keeps the template it has, and every chunk is still relayed as parsed."""

    def shifting(tag: str, i: int, text: str) -> str:  # the field after the text differs
        return content(text).replace('"usage":null', f'"usage":null,"{tag}{i}":{i}')

    # The patterns are kept for the process: each part of the test has shapes of its own.
    datas = [shifting("compare", i, f"t{i}") for i in range(20)]
    fast, _ = run(OpenAIChat(include_usage=False), datas, fast=True)
    slow, _ = run(OpenAIChat(include_usage=False), datas, fast=False)
    assert fast == slow
    translator = Translator(OpenAIChat(include_usage=False))
    for i in range(20):
        translator.feed(sse(shifting("learn", i, f"t{i}")))
    template = translator.template
    assert template.match(sse(shifting("learn", 7, "again"))) == "again"  # the eighth, kept
    assert template.match(sse(shifting("learn", 19, "again"))) is None  # never learned


def test_a_template_from_non_compact_json_is_not_canonical() -> None:
    translator = Translator(OpenAIChat(include_usage=False))
    translator.feed_events([Event(content("Hello").replace('"model":"m"', '"model": "m"'))])
    assert translator.template.learned
    assert not translator.template.canonical


def test_fields_that_could_say_something_keep_a_chunk_off_the_fast_path() -> None:
    for extra in ('"x_groq":{"id":"r1"},', '"error":"x",', '"warnings":[],'):
        chunk = content("Hello").replace('"choices":', extra + '"choices":', 1)
        translator = Translator(OpenAIChat(include_usage=False))
        translator.feed_events([Event(chunk)])
        assert not translator.template.learned, extra


def delta_chunk(delta: str, *, reason: str = "null") -> str:
    return f'{HEAD}[{{"index":0,"delta":{delta},"finish_reason":{reason}}}],"usage":null}}'


def thought(text: str, key: str = "reasoning_content") -> str:
    return delta_chunk(f'{{"{key}":"{text}"}}')


def fragment(text: str, index: int = 0) -> str:
    return delta_chunk(
        f'{{"tool_calls":[{{"index":{index},"function":{{"arguments":"{text}"}}}}]}}'
    )


def opening(index: int, call_id: str, name: str) -> str:
    function = f'{{"name":"{name}","arguments":""}}'
    call = f'{{"index":{index},"id":"{call_id}","type":"function","function":{function}}}'
    return delta_chunk(f'{{"tool_calls":[{call}]}}')


# Reasoning and tool calls: the template learns their strings too (issue 12).
BEYOND_TEXT = [
    thought("Let"),
    thought(" me"),
    thought(" think \u00f6"),
    thought(" \\u00f6 escaped"),
    thought(" other key", key="reasoning"),
    thought(" again"),
    content("Answer"),
    content(" text"),
    fragment('{\\"x'),  # escaped: slow path, and before the call opened
    opening(0, "a", "f"),
    fragment("{"),
    fragment("x"),
    fragment(":1"),
    fragment("", index=0),
    opening(1, "b", "g"),
    fragment("[", index=1),
    fragment("2]", index=1),
    fragment("}"),
    thought(" late"),
    thought(" thought"),
    fragment("y"),
    delta_chunk('{"tool_calls":[{"index":true,"function":{"arguments":"z"}}]}'),
    delta_chunk("{}", reason='"tool_calls"'),
    "[DONE]",
]


@pytest.mark.parametrize("start", range(0, len(BEYOND_TEXT), 3))
def test_fast_path_matches_slow_path_for_reasoning_and_tool_calls(start: int) -> None:
    from lib.aisdk import TextStream, UIMessageStream
    from lib.formats import WholeResponse

    datas = BEYOND_TEXT[start:] + BEYOND_TEXT[:start]
    makers: list[Callable[[], Format]] = [
        lambda: OpenAIChat(include_usage=False),
        lambda: OpenAICompletion(include_usage=False),
        UIMessageStream,
        TextStream,
        lambda: WholeResponse(shape="chat"),
    ]
    for make in makers:
        fast_fmt, slow_fmt = make(), make()
        fast, fast_outcome = run(fast_fmt, datas, fast=True)
        slow, slow_outcome = run(slow_fmt, datas, fast=False)
        assert fast == slow, fast_fmt
        assert fast_fmt.close() == slow_fmt.close(), fast_fmt
        for name in ("done", "events", "finish_reason"):
            assert getattr(fast_outcome, name) == getattr(slow_outcome, name), name


def test_fast_path_is_taken_for_reasoning_and_arguments() -> None:
    from lib.aisdk import UIMessageStream

    translator = Translator(UIMessageStream())
    translator.feed_events([Event(thought("a")), Event(thought("b"))])
    template = translator.template
    assert template.kind == "reasoning_content"
    assert template.match(sse(thought(" more"))) == " more"
    for data in (opening(0, "a", "f"), fragment("{"), fragment("}")):
        translator.feed_events([Event(data)])
    assert template.kind == "arguments"
    assert template.match(sse(fragment("x"))) == "x"
    assert template.match(sse(fragment("x", index=1))) is None  # another call: parsed
