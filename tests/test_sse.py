"""The sans-I/O SSE codec, tested the h11 / openai-python way: every split index for every line
ending, byte-at-a-time feeding, and hypothesis properties for round trips and arbitrary cuts."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.sse import DONE, Event, LineTooLong, SSEDecoder, encode_comment, encode_event, encode_json

EOLS = [b"\n", b"\r\n", b"\r"]
EOL_IDS = ["LF", "CRLF", "CR"]
BOM = b"\xef\xbb\xbf"


def decode(*chunks: bytes, max_line_bytes: int = 1 << 20) -> list[Event]:
    decoder = SSEDecoder(max_line_bytes)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush()


def cut(stream: bytes, positions: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(positions), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def frame(lines: Sequence[bytes], eol: bytes) -> bytes:
    return b"".join(line + eol for line in lines)


# A frame with every kind of line; the first event ends after "data:second" and its blank line.
FRAME = [
    b": a comment",
    b"event: update",
    b"id: 7",
    b"retry: 1500",
    b"data: " + '{"t": "hé €"}'.encode(),
    b"data:second",
    b"",
    b"data: [DONE]",
    b"",
]
FRAME_EVENTS = [
    Event('{"t": "hé €"}\nsecond', event="update", id="7", retry=1500),
    Event("[DONE]", id="7"),
]


@pytest.mark.parametrize("eol", EOLS, ids=EOL_IDS)
def test_every_split_index_gives_the_same_events_without_delaying_any(eol: bytes) -> None:
    stream = frame(FRAME, eol)
    # An event is complete once the first byte of its blank line's line end has arrived.
    ready = [stream.index(b"second") + len(b"second") + len(eol) + 1, len(stream) - len(eol) + 1]
    for i in range(len(stream) + 1):
        decoder = SSEDecoder()
        head = decoder.feed(stream[:i])
        tail = decoder.feed(stream[i:])
        assert head + tail + decoder.flush() == FRAME_EVENTS, i
        assert head == [e for e, at in zip(FRAME_EVENTS, ready, strict=True) if at <= i], i
        assert not decoder.pending


@pytest.mark.parametrize("eol", EOLS, ids=EOL_IDS)
def test_byte_at_a_time(eol: bytes) -> None:
    stream = frame(FRAME, eol)
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == FRAME_EVENTS


@pytest.mark.parametrize("text", ["a€b", "😀", "ö\u2028x"])
def test_a_character_split_across_chunks_comes_out_intact(text: str) -> None:
    stream = f"data: {text}\n\n".encode()
    start = len(b"data: ")
    for i in range(start, start + len(text.encode()) + 1):
        assert decode(stream[:i], stream[i:]) == [Event(text)], i


def test_only_cr_and_lf_break_lines() -> None:
    text = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei"
    assert decode(f"data: {text}\n\n".encode()) == [Event(text)]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\xe2\x82\n\n") == [Event("a\ufffdb\ufffd")]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert decode(b"data: one\ndata:two\r\ndata: three\r\n\n") == [Event("one\ntwo\nthree")]


def test_comments_dispatch_nothing_and_do_not_interrupt_an_event() -> None:
    stream = b": hello\n:\n\ndata: a\n: between\ndata: b\n\n: bye\n\n"
    assert decode(stream) == [Event("a\nb")]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: x", "x"),
        (b"data:x", "x"),
        (b"data:  x", " x"),
        (b"data:\tx", "\tx"),
        (b"data: a:b", "a:b"),
        (b"data: ", ""),
        (b"data:", ""),
        (b"data", ""),
    ],
)
def test_one_optional_space_after_the_colon_is_removed(line: bytes, data: str) -> None:
    assert decode(line + b"\n\n") == [Event(data)]


@pytest.mark.parametrize("line", [b"Data: x", b"datum: x", b" data: x", BOM + b"data: x"])
def test_unknown_fields_are_ignored(line: bytes) -> None:
    assert decode(b"\n" + line + b"\n\ndata: y\n\n") == [Event("y")]


def test_empty_data_lines() -> None:
    assert decode(b"data:\n\n") == [Event("")]
    assert decode(b"data:\ndata:\n\n") == [Event("\n")]
    assert decode(b"data: x\ndata:\n\n") == [Event("x\n")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\r\r\n") == []
    assert decode(b"event: e\nid: 1\nretry: 5\n\n") == []


def test_event_type_and_retry_belong_to_one_event_and_id_persists() -> None:
    stream = b"event: e\nid: 1\nretry: 10\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\n"
    assert decode(stream) == [
        Event("a", event="e", id="1", retry=10),
        Event("b", id="1"),
        Event("c", id="2"),
    ]


def test_event_field_without_value_is_empty_not_absent() -> None:
    assert decode(b"event\ndata: x\n\n") == [Event("x", event="")]


def test_an_event_type_without_data_does_not_leak_into_the_next_event() -> None:
    assert decode(b"event: e\n\ndata: x\n\n") == [Event("x")]


def test_id_with_nul_is_ignored_and_empty_id_resets() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid\ndata: c\n\n"
    assert decode(stream) == [Event("a", id="1"), Event("b", id="1"), Event("c", id="")]


@pytest.mark.parametrize(
    ("line", "retry"),
    [
        (b"retry: 1500", 1500),
        (b"retry:0", 0),
        (b"retry: 007", 7),
        (b"retry: 1.5", None),
        (b"retry: -1", None),
        (b"retry: +1", None),
        (b"retry:  5", None),
        (b"retry: 5 ", None),
        (b"retry: 1e3", None),
        ("retry: ５".encode(), None),
        (b"retry:", None),
        (b"retry", None),
    ],
)
def test_retry_takes_only_ascii_digits(line: bytes, retry: int | None) -> None:
    assert decode(line + b"\ndata: x\n\n") == [Event("x", retry=retry)]


def test_a_leading_bom_is_stripped_even_when_split() -> None:
    stream = BOM + b"data: x\n\n"
    for i in range(len(stream) + 1):
        assert decode(stream[:i], stream[i:]) == [Event("x")], i
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == [Event("x")]


def test_only_one_bom_at_the_very_start_is_stripped() -> None:
    assert decode(BOM + BOM + b"data: x\n\ndata: y\n\n") == [Event("y")]
    assert decode(b"data: x\n\n" + BOM + b"data: y\n\n") == [Event("x")]
    assert decode(b"\xefdata: x\n\ndata: y\n\n") == [Event("y")]  # a BOM prefix, then not


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # completes the CRLF; an extra blank line would dispatch
    assert decoder.pending
    assert decoder.feed(b"data: b\r\n\r") == [Event("a\nb")]
    assert decoder.feed(b"\n") == []
    assert not decoder.pending


def test_cr_framed_event_is_dispatched_without_waiting_for_the_next_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [Event("a")]
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [Event("b")]


@pytest.mark.parametrize(
    ("stream", "pending"),
    [
        (b"", False),
        (b"data: x\n\n", False),
        (b"data: x\n\n\r", False),
        (b": ping\n", False),
        (b": ping\n\n", False),
        (b"data: x\n", True),
        (b"data: x\r", True),
        (b"data: x", True),
        (b"da", True),
        (b"event: e\n", True),
        (b"id: 1\n", True),
        (b"\xef\xbb", True),
    ],
)
def test_unterminated_event_is_pending_and_never_dispatched(stream: bytes, pending: bool) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(stream) == ([Event("x")] if stream.startswith(b"data: x\n\n") else [])
    assert decoder.pending is pending
    assert decoder.flush() == []
    assert decoder.pending is pending  # still answerable after the end of the stream


CAP = 64 * 1024


def test_a_line_of_exactly_the_cap_is_accepted_even_in_pieces() -> None:
    line = b"data: " + b"x" * (CAP - 6)
    assert decode(line + b"\n\n", max_line_bytes=CAP) == [Event("x" * (CAP - 6))]
    pieces = cut(line + b"\n\n", range(1000, CAP, 1000))
    assert decode(*pieces, max_line_bytes=CAP) == [Event("x" * (CAP - 6))]


def test_a_line_over_the_cap_raises_even_when_complete() -> None:
    decoder = SSEDecoder(CAP)
    with pytest.raises(LineTooLong) as caught:
        decoder.feed(b"data: ok\n\n: " + b"x" * (CAP - 1) + b"\n")
    assert caught.value.limit == CAP  # the status it maps to: tests/test_translate.py


def test_an_unterminated_line_raises_as_soon_as_it_passes_the_cap_and_memory_stays_bounded() -> (
    None
):
    decoder = SSEDecoder(CAP)
    chunk = 1000
    decoder.feed(b"data: " + b"x" * (chunk - 6))
    fed = chunk
    while fed + chunk <= CAP:
        assert decoder.feed(b"x" * chunk) == []
        fed += chunk
        assert decoder.buffered == fed <= CAP
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * chunk)
    assert decoder.buffered == 0  # what it held is released, not kept until the decoder dies


def test_a_long_line_finished_by_a_later_chunk_still_raises() -> None:
    decoder = SSEDecoder(CAP)
    decoder.feed(b"data: " + b"x" * (CAP - 10))
    with pytest.raises(LineTooLong):
        decoder.feed(b"x" * 20 + b"\n\n")


def test_accumulated_data_of_one_event_is_capped_too() -> None:
    cap = 1000
    decoder = SSEDecoder(cap)
    line = b"data: " + b"x" * 99 + b"\n"  # 100 bytes of data buffer each (value + LF)
    for _ in range(cap // 100):
        assert decoder.feed(line) == []
        assert decoder.buffered <= cap
    with pytest.raises(LineTooLong):
        decoder.feed(line)


def test_many_short_lines_and_events_beyond_the_cap_are_fine() -> None:
    cap = 1000
    stream = (b": ping\n" + b"data: " + b"x" * 99 + b"\n\n") * 100
    assert len(decode(stream, max_line_bytes=cap)) == 100
    assert len(decode(*cut(stream, range(7, len(stream), 333)), max_line_bytes=cap)) == 100


# --- encoders -------------------------------------------------------------------------------


def test_encode_event_exact_bytes() -> None:
    assert encode_event("a\nb", event="e", id="1") == b"event: e\nid: 1\ndata: a\ndata: b\n\n"
    assert encode_event(" x") == b"data:  x\n\n"
    assert encode_event("") == b"data: \n\n"


@pytest.mark.parametrize(
    "fields", [{"event": "a\nb"}, {"event": "a\rb"}, {"id": "1\n"}, {"id": "\r"}, {"id": "1\x002"}]
)
def test_encode_event_refuses_fields_it_cannot_represent(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SSE"):
        encode_event("x", **fields)


def test_encode_comment_and_done() -> None:
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b": \n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert DONE == b"data: [DONE]\n\n"
    decoder = SSEDecoder()
    assert decoder.feed(encode_comment("a\r\nb") + DONE + encode_comment()) == [Event("[DONE]")]
    assert not decoder.pending


def test_encode_json_exact_bytes() -> None:
    obj = {"a": [1, "ö\u2028\n"], "b": None, "c": 1.5}
    assert encode_json(obj) == b'data: {"a":[1,"\\u00f6\\u2028\\n"],"b":null,"c":1.5}\n\n'


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_json_refuses_what_json_parse_rejects(value: float) -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_json({"x": value})


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"')


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_encode_json_is_ascii_single_line_compact_and_round_trips(obj: object) -> None:
    out = encode_json(obj)
    assert out.startswith(b"data: ")
    assert out.endswith(b"\n\n")
    body = out[6:-2]
    assert body.isascii()
    assert b"\n" not in body
    assert b"\r" not in body
    assert b" " not in STRING_LITERAL.sub(b'""', body)
    assert json.loads(body) == obj
    assert decode(out) == [Event(body.decode())]


# --- properties -----------------------------------------------------------------------------

LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
ID_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"))
DATA_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r"))
ANY_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["\r", "\n", "\u2028", "\x85", "é"])
)


@settings(max_examples=300, deadline=None)
@given(DATA_TEXT, st.none() | LINE_TEXT, st.none() | ID_TEXT)
def test_decode_inverts_encode_event(data: str, event: str | None, id_: str | None) -> None:
    assert decode(encode_event(data, event=event, id=id_)) == [Event(data, event=event, id=id_)]


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_decode_inverts_encode_event_up_to_line_end_style(data: str) -> None:
    assert decode(encode_event(data)) == [Event(re.sub(r"\r\n?", "\n", data))]


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A valid stream of random events, with a random line end per line and comments between
    lines, and the events a WHATWG parser must dispatch from it."""
    lines: list[bytes] = []
    expected: list[Event] = []
    last_id: str | None = None

    def field(name: str, value: str) -> None:
        if draw(st.booleans()):
            lines.append(b":" + draw(LINE_TEXT).encode())
        sep = ": " if value.startswith(" ") else draw(st.sampled_from([": ", ":"]))
        lines.append(f"{name}{sep}{value}".encode())

    for _ in range(draw(st.integers(0, 4))):
        data = draw(DATA_TEXT)
        event = draw(st.none() | LINE_TEXT)
        id_ = draw(st.none() | ID_TEXT)
        retry = draw(st.none() | st.integers(0, 10**9))
        others = [("event", event), ("id", id_), ("retry", None if retry is None else str(retry))]
        for name, value in draw(st.permutations(others)):
            if value is not None:
                field(name, value)
        for data_line in data.split("\n"):
            field("data", data_line)
        lines.append(b"")
        last_id = last_id if id_ is None else id_
        expected.append(Event(data, event=event, id=last_id, retry=retry))

    out = bytearray(BOM if draw(st.booleans()) else b"")
    eol = b""
    for line in lines:
        # A blank line ended by LF right after a CR would merge into one CRLF line end.
        choices = [b"\r\n", b"\r"] if eol == b"\r" and not line else EOLS
        eol = draw(st.sampled_from(choices))
        out += line + eol
    return bytes(out), expected


@settings(max_examples=300, deadline=None)
@given(streams(), st.data())
def test_any_valid_stream_cut_anywhere_yields_its_events(
    case: tuple[bytes, list[Event]], data: st.DataObject
) -> None:
    stream, expected = case
    positions = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    assert decode(stream) == expected
    decoder = SSEDecoder()
    events = [event for piece in cut(stream, positions) for event in decoder.feed(piece)]
    assert events + decoder.flush() == expected
    assert not decoder.pending


TOKENS = [b"\r", b"\n", b":", b" ", b"data", b"event", b"id", b"retry", b"7", b"x", b"\0"]
TOKENS += [BOM, "€".encode(), b"\xe2", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join), st.data())
def test_arbitrary_bytes_decode_the_same_however_they_are_cut(
    stream: bytes, data: st.DataObject
) -> None:
    whole = SSEDecoder()
    expected = whole.feed(stream)
    pieces = cut(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    split = SSEDecoder()
    assert [event for piece in pieces for event in split.feed(piece)] == expected
    assert split.pending is whole.pending


def test_simple_event_fast_path_matches_line_by_line() -> None:
    """Runs of one-line ``data:`` events take a one-pass path; the events must be the same as
    line by line, with the last event ID carried over and after anything unusual."""
    stream = (
        b"id: 7\ndata: a\n\ndata: b\n\n"
        b": comment\n\ndata: c\n\ndata:\n\ndata: d\ndata: e\n\n"
        b"event: x\ndata: f\n\ndata: g\n\n\n\ndata: h\r\n\r\ndata: \xc3\xa9\n\n"
    )
    expected = [
        Event("a", id="7"),
        Event("b", id="7"),
        Event("c", id="7"),
        Event("", id="7"),
        Event("d\ne", id="7"),
        Event("f", event="x", id="7"),
        Event("g", id="7"),
        Event("h", id="7"),
        Event("é", id="7"),
    ]
    assert decode(stream) == expected
    for i in range(len(stream) + 1):
        assert decode(stream[:i], stream[i:]) == expected, i
