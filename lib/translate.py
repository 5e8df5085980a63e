"""Upstream stream bytes in, the caller's bytes out: the sans-I/O core of every stream.

A :class:`Translator` is fed what the upstream sent, one read at a time, and returns the bytes
to write for it; it knows nothing of sockets, tasks or time (the pump in ``lib/relay.py`` owns
those). It decodes the SSE framing, parses and checks each chunk, notices ``[DONE]``, in-band
upstream errors and a looping model, and hands each chunk to the output :class:`Format` (the
part that differs per format: ``lib/formats.py`` and ``lib/aisdk.py``). What the stream said so
far is on :attr:`Translator.said`.

The protocol, as the pump uses it (h11 style: every step returns bytes, nothing is written
here)::

    t = Translator(fmt, max_line_bytes=..., secret=api_key, repetition=(window, period))
    write(t.open())                         # right after the headers (may be b"")
    for read in upstream:
        out, failure = t.feed(read)         # the events this read completed, as bytes
        write(out)                          # events before a failure still go out, in order
        if failure: write(t.fail(failure))  # None: no error channel, break the connection
        if t.said.done: break               # [DONE]
    t.end()                                 # raises UpstreamTruncated if the answer was cut
    write(t.close())                        # the format's clean end
    # while the upstream is silent: t.keepalive() (None: send nothing)

A new output format implements :class:`Format` (every method; see its docstring) and gets
decoding, checks, errors, loops and the fast path from here unchanged.

The fast path: most chunks of a stream differ from the one before only in one string (see
:class:`ContentTemplate`). Those skip ``json.loads`` and go to :meth:`Format.delta` or
:meth:`Format.other_delta`, which return exactly what :meth:`Format.chunk` would for them (or
None: "parse it after all").
"""

from __future__ import annotations

import json
import re
from typing import Any

from lib.errors import (
    APIError,
    RepetitiveOutput,
    UpstreamLineTooLong,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTruncated,
    redact,
)
from lib.formats import Format
from lib.log import warn
from lib.repetition import RepetitionDetector
from lib.sse import Event, LineTooLong, SSEDecoder, encode_json, text_of


class Said:
    """What the upstream's events said so far."""

    __slots__ = ("done", "events", "failure", "finish_reason", "usage")

    def __init__(self) -> None:
        self.done = False  # [DONE] seen, or a clean end of a finished answer
        self.events = 0  # output events written
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None  # the upstream's last usage object
        self.failure: str | None = None  # the type of the in-band error the stream ended with


class Translator:
    """One stream's upstream events -> one output format's bytes (see the module docstring)."""

    __slots__ = ("_decoder", "_fmt", "_loops", "_secret", "said", "template")

    def __init__(
        self,
        fmt: Format,
        *,
        max_line_bytes: int = 1 << 20,
        secret: str | None = None,
        repetition: tuple[int, int] | None = None,
    ) -> None:
        self._fmt = fmt
        self._decoder = SSEDecoder(max_line_bytes)
        self._secret = secret  # redacted from upstream error messages
        self._loops = None if repetition is None else RepetitionDetector(*repetition)
        self.said = Said()
        self.template = ContentTemplate()

    @property
    def format(self) -> Format:
        return self._fmt

    def open(self) -> bytes:
        return self._fmt.open()

    def close(self) -> bytes:
        return self._fmt.close()

    def fail(self, error: APIError) -> bytes | None:
        """The format's in-band error; None: it has none and the connection must break."""
        self.said.failure = error.type
        return self._fmt.fail(error)

    def keepalive(self) -> bytes | None:
        return self._fmt.keepalive()

    def feed(self, data: bytes) -> tuple[bytes, APIError | None]:
        """The bytes for the events one upstream read completed, and the failure that ended
        them, if any."""
        decoder = self._decoder
        try:
            # At real pacing nearly every read is one event, and most are plain chunks: those
            # are matched as the read's bytes (a match is one whole line: the template has no
            # line break and its holes allow none) with no step through the decoder.
            if decoder.idle and len(data) <= decoder.max_line_bytes:
                found = self.template.match_at(data, 0) if self.template.head else None
                if found is not None:
                    if found[0] == len(data):  # the read is that one event
                        done = self._plain(data, found[1])
                    else:  # a backlog that starts with it
                        done = self._plain_run(data, found)
                    if done is not None:
                        return done
                if decoder.single(data):
                    return self._parsed(data)
            return self.feed_events(decoder.feed(data))
        except LineTooLong as exc:  # the events completed before it in this read are dropped
            return b"", UpstreamLineTooLong(exc.limit)
        except _MALFORMED as exc:
            # A shape the checks in feed_events (_wrong_shape, the parser's recursion limit)
            # did not foresee: still the upstream's fault, still an in-band error, never a
            # traceback. The events of this read are not sent.
            warn("An upstream event had an unexpected shape.", error=type(exc).__name__)
            return b"", UpstreamProtocolError(
                "The upstream sent an event of a shape the protocol does not allow."
            )

    def _plain_run(
        self, data: bytes, first: tuple[int, str]
    ) -> tuple[bytes, APIError | None] | None:
        """A read that holds several events (a backlog: the upstream was faster than the
        relay) and starts with a plain chunk (``first``: its match): the plain chunks are
        matched in place, one after another, each as a read of its own would be; from the
        first that is not one, the rest goes through the decoder. A chat stream whose plain
        chunks are relayed as they came writes that part of the read itself. None when the
        format wants the first one parsed."""
        template = self.template
        parts: list[bytes] = []
        as_came = True  # every part so far is its event as it came: the read's bytes
        pos, size = 0, len(data)
        failure: APIError | None = None
        found: tuple[int, str] | None = first
        while found is not None:
            end, text = found
            event = data[pos:end]
            done = self._plain(event, text)
            if done is None:
                break
            out, failure = done
            if failure is not None:
                break
            if out is not event:
                as_came = False
            if out:
                parts.append(out)
            pos = end
            found = template.match_at(data, pos) if pos < size else None
        if pos == 0:
            return None
        head = data[:pos] if as_came else b"".join(parts)
        if failure is not None or pos == size:
            return head, failure
        out, failure = self.feed_events(self._decoder.feed(data[pos:]))
        return head + out, failure

    def slice_end(self, data: bytes, start: int, most: int) -> int:
        """Where a slice of a big read (``lib/relay.py``) that starts at ``start`` and holds at
        most ``most`` bytes should end: at an event's end, so that the next slice starts on an
        event and its events are matched in place. A slice cut inside an event sends that event
        and every event after it in the next slice through the decoder (unpaced, 0.43 against
        0.29 s / 100k events). Mid-event (the decoder holds the start of one), at that event's
        end; with no event end within ``most``, ``most`` bytes on."""
        if self._decoder.idle:
            end = data.rfind(b"\n\n", start, start + most)
        else:
            end = data.find(b"\n\n", start, start + most)
        return start + most if end < 0 else end + 2

    def end(self) -> None:
        """The upstream body ended: a clean end only after ``[DONE]`` or a finish reason."""
        said = self.said
        if not said.done and said.finish_reason is None:
            raise UpstreamTruncated("The upstream stream ended before the answer was complete.")
        said.done = True

    def feed_events(self, events: list[Event]) -> tuple[bytes, APIError | None]:
        """:meth:`feed` for events already decoded."""
        parts: list[bytes] = []
        said = self.said
        for event in events:
            # As one read of its own would carry it: the fast path matches whole events.
            out, failure = self._one(b"data: " + event.data.encode() + b"\n\n")
            if failure is not None:
                return b"".join(parts), failure
            if out:
                parts.append(out)
            if said.done:  # [DONE]: whatever follows it is not read
                break
        return b"".join(parts), None

    def _one(self, event: bytes) -> tuple[bytes, APIError | None]:
        """One event's bytes (``event``: ``data: `` and its data, then a blank line), or the
        failure it is (then nothing of it is written)."""
        template = self.template
        if template.head:  # a template was learned
            text = template.match(event)
            if text is not None:
                done = self._plain(event, text)
                if done is not None:
                    return done
        return self._parsed(event)

    def _plain(self, event: bytes, text: str) -> tuple[bytes, APIError | None] | None:
        """A plain chunk the template matched (``text``: its string), or None when the format
        wants it parsed after all."""
        template = self.template
        kind, fmt = template.kind, self._fmt
        if fmt.relays_as_is and event.isascii() and template.canonical:
            out: bytes | None = event
        elif kind == "content":
            out = fmt.delta(event, text, template)
        else:
            out = fmt.other_delta(kind, event, text, template)
        if out is None:
            return None
        if kind != "arguments" and self._loops is not None:
            period = self._loops.feed(text)
            if period is not None:
                return b"", _repetitive(period)
        if out:
            self.said.events += 1
        return out, None

    def _parsed(self, event: bytes) -> tuple[bytes, APIError | None]:
        """The slow path for one event: parsed, checked, learned from, and a new template."""
        said = self.said
        data = text_of(event[6:-2])
        if not data:
            return b"", None
        if data == "[DONE]":
            said.done = True
            return b"", None
        chunk, failure = self._parse(data)
        if failure is None:
            assert chunk is not None
            failure = self._learn(chunk)
        if failure is not None:
            return b"", failure
        assert chunk is not None
        self.template.learn(data, chunk)
        out = self._fmt.chunk(data, chunk)
        if out:
            said.events += 1
        return out, None

    def _parse(self, data: str) -> tuple[dict[str, Any] | None, APIError | None]:
        """The chunk one event holds, or what is wrong with it."""
        try:
            chunk = _DECODER.decode(data)
        except ValueError:
            return None, UpstreamProtocolError("The upstream sent an event that is not valid JSON.")
        except RecursionError:  # the C parser's recursion limit: hostile nesting
            return None, UpstreamProtocolError(
                "The upstream sent an event nested too deeply to read."
            )
        if not isinstance(chunk, dict):
            return None, UpstreamProtocolError(
                "The upstream sent an event that is not a JSON object."
            )
        wrong = _wrong_shape(chunk)
        if wrong is not None:
            return None, UpstreamProtocolError(f"The upstream sent an event {wrong}.")
        if "error" in chunk:
            return None, UpstreamStreamError(_upstream_message(chunk["error"], self._secret))
        return chunk, None

    def _learn(self, chunk: dict[str, Any]) -> APIError | None:
        """Note a parsed chunk's finish reason and usage; the error if it completes a loop."""
        said = self.said
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                said.finish_reason = reason
            looping = self._looping(_text_of(choices[0]))
            if looping is not None:
                return looping
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            said.usage = usage
        return None

    def _looping(self, text: str) -> APIError | None:
        """The error that cuts a looping model off, once ``text`` completes the loop; called
        with every parsed content delta (the fast path calls the detector itself)."""
        if self._loops is None:
            return None
        period = self._loops.feed(text)
        return None if period is None else _repetitive(period)


def _repetitive(period: int) -> RepetitiveOutput:
    return RepetitiveOutput(
        f"The model kept repeating the same {period}-character passage; the response was "
        "cut off and is incomplete."
    )


_MALFORMED = (RecursionError, AttributeError, TypeError, KeyError, IndexError, ValueError)


def _wrong_shape(chunk: dict[str, Any]) -> str | None:
    """What is wrong with a parsed chunk's shape, in the fields the formats read (the chat and
    completion chunk schemas), or None. Only parsed chunks come here: the fast path's chunks
    have the shape of one that passed."""
    choices = chunk.get("choices")
    if choices is not None:
        if not isinstance(choices, list):
            return "whose choices is not a list"
        for choice in choices:
            if not isinstance(choice, dict):
                return "with a choice that is not an object"
            delta = choice.get("delta")
            if delta is not None and not isinstance(delta, dict):
                return "whose delta is not an object"
            text = choice.get("text") if delta is None else delta.get("content")
            if text is not None and not isinstance(text, str):
                return "whose text is not a string"
            reason = choice.get("finish_reason")
            if reason is not None and not isinstance(reason, str):
                return "whose finish_reason is not a string"
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "whose usage is not an object"
    return None


class ContentTemplate:
    """Recognises a stream's plain chunks by their bytes, so they skip ``json.loads``.

    Most chunks of a stream differ only in one string: same id, model and created, one choice,
    ``finish_reason`` null, no usage and no error, and a delta that holds only ``content``, or
    only reasoning (``reasoning_content`` / ``reasoning``), or only one tool call's next
    ``arguments`` fragment (``{"index": n, "function": {"arguments": ...}}``). Other fields may
    be there as the real APIs send them, as long as they cannot say anything: scalars at the top
    (OpenAI's ``service_tier`` and ``system_fingerprint``, OpenRouter's ``provider``), nulls in
    the choice (``logprobs``, ``native_finish_reason``). After parsing such a chunk whose string
    has no quote, backslash or control character, the JSON before and after that string is
    kept, with its ``kind``. A later chunk that starts and ends with exactly that JSON, and
    whose middle again has no quote, backslash or control character, is the same document with
    another string: valid JSON, no finish reason, no usage, no error, so nothing the slow path
    would learn from it is lost. Anything else (other fields, escapes, a finish reason, usage,
    errors, ``[DONE]``, invalid JSON) takes the slow path, which also re-learns the template.

    The template is the whole event as bytes (``data: ``, the JSON, the blank line), and it
    matches the bytes of a read that is one event: nothing is decoded but the string, and a
    chat format can relay the read itself. A read that holds several (a backlog) is matched the
    same way, event after event in place (:meth:`match_at`), up to the first that is not a plain
    chunk; an event the decoder took apart is framed again first. A chunk whose JSON spans lines
    gets no template.

    OpenAI pads every chunk with a random ``obfuscation`` string (against side channels that
    read token lengths from packet sizes), so its chunks differ in two strings. When the learned
    chunk has one, the template has a second hole for it: head, text, ``mid``, padding, tail,
    the text ending at its closing quote (it has none inside). The padding is relayed as the
    upstream sent it wherever the format carries it.

    The parsed chunk (:attr:`like`) is made from the template only when a format asks for it
    (to encode its own chunk around a text, say): a chat stream relayed as it is never does,
    and the parsed chunk would be about a kilobyte more for every open stream.
    """

    __slots__ = (
        "_canonical",
        "_like",
        "_shapes",
        "head",
        "kind",
        "mid",
        "rest",
        "tail",
    )

    def __init__(self) -> None:
        self._like: dict[str, Any] | None = None  # parsed on first use, then kept
        self.kind = "content"  # content, reasoning_content, reasoning or arguments
        self.head = b""  # b"data: " and the JSON before the text
        self.mid = b""  # after the text: up to the padding when padded, else to the end
        self.tail = b""  # after the padding, to the end (b"" when not padded)
        self.rest: re.Pattern[bytes] | None = None  # matches the event after the head
        self._canonical: bool | None = None  # worked out on first use, then kept
        self._shapes = 0  # patterns this stream had compiled (see learn)

    def learn(self, data: str, chunk: dict[str, Any]) -> None:
        """Keep the JSON around the string of a parsed plain chunk (``data``: its event's data),
        as the bytes of the whole event, framing included."""
        found = _plain_text(chunk)
        if found is None or _UNSAFE_TEXT.search(found[1]) is not None or "\n" in data:
            return  # not plain, or not the one-line event a template matches
        kind, text = found
        key = f'"{kind}":"'
        start = data.find(key + text + '"')
        if start < 0 or data.count(key) != 1:
            return  # spelled differently by the upstream, or ambiguous: no template
        cut = start + len(key)
        end = cut + len(text)
        pad = chunk.get("obfuscation")
        if pad is None:
            mid, tail = data[end:] + "\n\n", ""
        else:
            if not isinstance(pad, str) or _UNSAFE_TEXT.search(pad) or data.count(_PAD_KEY) != 1:
                return
            at = data.find(_PAD_KEY + pad + '"', end)
            if at < 0:
                return  # before the text, or spelled differently: no template
            after = at + len(_PAD_KEY)
            mid, tail = data[end:after], data[after + len(pad) :] + "\n\n"
        mid_bytes, tail_bytes = mid.encode(), tail.encode()
        rest = _RESTS.get((mid_bytes, tail_bytes))
        if rest is None:
            # The JSON after the string is the same for every chunk of a stream, and for every
            # stream of an upstream, so its pattern is compiled once per process. One stream
            # whose chunks keep changing it is not worth a compilation for each.
            if self._shapes >= _MAX_SHAPES:
                return
            self._shapes += 1
            rest = _rest_pattern(mid_bytes, tail_bytes)
        self.head = ("data: " + data[:cut]).encode()
        self.mid, self.tail, self.rest = mid_bytes, tail_bytes, rest
        self.kind, self._like, self._canonical = kind, None, None

    @property
    def learned(self) -> bool:
        return bool(self.head)

    @property
    def padded(self) -> bool:
        """Whether the chunk has OpenAI's ``obfuscation`` string (then there is a tail)."""
        return bool(self.tail)

    @property
    def canonical(self) -> bool:
        """Whether the event around the string (and the padding) is exactly what encode_json
        writes (compact, ASCII, the upstream's order): a format may then relay a matched event
        as it is, or re-escape its string alone. Worked out when first asked (one parse and one
        encoding), not on every learn."""
        canonical = self._canonical
        if canonical is None:
            encoded = encode_json(_DECODER.decode(self._blank()))
            canonical = self._canonical = encoded == self.head + self.mid + self.tail
        return canonical

    @property
    def like(self) -> dict[str, Any]:
        """The template's chunk, parsed (its string and padding empty: they are what differs),
        once a template is learned. Its keys are the module's own strings."""
        like = self._like
        if like is None:
            like = self._like = _shared(_DECODER.decode(self._blank()))
        return like

    def _blank(self) -> str:
        """The template's chunk with its string (and padding) empty: valid JSON."""
        assert self.head, "no template learned"
        return (self.head + self.mid + self.tail)[6:-2].decode()

    def match(self, event: bytes) -> str | None:
        """The string of ``event`` (one whole event: ``data: ``, the JSON, a blank line) if it
        is a plain chunk of the template's shape, else None."""
        found = self.match_at(event, 0)
        return found[1] if found is not None and found[0] == len(event) else None

    def match_at(self, data: bytes, pos: int) -> tuple[int, str] | None:
        """Where the event that starts at ``pos`` in ``data`` ends, and its string, if it is a
        plain chunk of the template's shape. All on the bytes as they came (a chat stream's
        event goes out as it is, never decoded), in two C calls: the head compared, then one
        pattern for the rest (string, mid, padding, tail)."""
        head = self.head
        if not data.startswith(head, pos):
            return None
        assert self.rest is not None
        found = self.rest.match(data, pos + len(head))
        if found is None:
            return None
        try:
            return found.end(), found.group(1).decode()
        except UnicodeDecodeError:
            return None  # the slow path decodes it with replacement characters


def _rest_pattern(mid: bytes, tail: bytes) -> re.Pattern[bytes]:
    """What follows a template's head: the string (no quote, backslash or control character:
    then it is its own JSON form), the mid, and when padded (``tail`` not empty) the padding,
    as safe, and the tail; then the end of the event. Kept for the process, a few at most."""
    safe = rb'[^"\\\x00-\x1f]*'
    source = b"(" + safe + b")" + re.escape(mid)
    if tail:
        source += safe + re.escape(tail)
    if len(_RESTS) >= _MAX_RESTS:
        _RESTS.clear()
    rest = _RESTS[(mid, tail)] = re.compile(source)
    return rest


_RESTS: dict[tuple[bytes, bytes], re.Pattern[bytes]] = {}
_MAX_RESTS = 256  # shapes kept for the process (a deployment has one upstream, a few shapes)
_MAX_SHAPES = 8  # new shapes one stream may have compiled; after that it learns no more

# In a JSON string these three need escapes; their absence makes the text its own JSON form.
_UNSAFE_TEXT = re.compile(r'[\x00-\x1f"\\]')
_TEXT_KINDS = frozenset({"content", "reasoning_content", "reasoning"})
_CHOICE_KEYS = frozenset({"index", "delta", "finish_reason"})
_PAD_KEY = '"obfuscation":"'


def _plain_text(chunk: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, string) of a chat chunk that carries nothing but one string in its delta (see
    :class:`ContentTemplate`), else None."""
    choices = chunk.get("choices")
    if chunk.get("usage") is not None or not isinstance(choices, list) or len(choices) != 1:
        return None
    for key, value in chunk.items():  # other fields: scalars that say nothing (no error)
        if key != "choices" and (key == "error" or isinstance(value, (dict, list))):
            return None
    choice = choices[0]
    if not isinstance(choice, dict) or not choice.keys() >= _CHOICE_KEYS:
        return None
    if any(value is not None for key, value in choice.items() if key not in _CHOICE_KEYS):
        return None  # logprobs and the like, when they carry something
    delta = choice["delta"]
    if choice["finish_reason"] is not None or not isinstance(delta, dict) or len(delta) != 1:
        return None
    ((kind, value),) = delta.items()
    if kind in _TEXT_KINDS:
        return (kind, value) if isinstance(value, str) else None
    if kind != "tool_calls" or not isinstance(value, list) or len(value) != 1:
        return None
    call = value[0]
    if not isinstance(call, dict) or call.keys() != {"index", "function"}:
        return None
    function = call["function"]
    if type(call["index"]) is not int or not isinstance(function, dict):
        return None
    if function.keys() != {"arguments"} or not isinstance(function["arguments"], str):
        return None
    return "arguments", function["arguments"]


# The keys a template chunk has as the OpenAI-compatible APIs send it, and the common values
# (``object``, ``service_tier``): kept once per process, not once per open stream.
_SHARED = {
    name: name
    for name in (
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "usage",
        *_TEXT_KINDS,
        "service_tier",
        "default",
        "logprobs",
        "obfuscation",
        "choices",
        "index",
        "delta",
        "finish_reason",
        "tool_calls",
        "function",
        "arguments",
        "chat.completion.chunk",
    )
}


def _shared(value: Any) -> Any:
    """The template chunk with its keys (and ``object`` value) as the module's own strings:
    the parser makes new ones for every chunk, and this one is kept for the whole stream
    (about 0.7 KiB per open stream less). Everything else stays as it is."""
    if isinstance(value, dict):
        return {_SHARED.get(k, k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str):
        return _SHARED.get(value, value)
    return value


def _text_of(choice: dict[str, Any]) -> str:
    """The generated text in a chat (``delta.content``) or completion (``text``) choice, and a
    chat delta's reasoning: a model can loop while it thinks too (tool arguments are left out:
    a long list of like items is legitimately periodic)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    text = delta.get("content")
    thought = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(thought, str) and thought:
        return thought + text if isinstance(text, str) else thought
    return text if isinstance(text, str) else ""


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity: no browser's JSON.parse accepts them


# Built once: json.loads with a keyword argument builds a new decoder on every call (3 us).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _upstream_message(error: Any, secret: str | None) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return "The upstream failed mid-stream: " + redact(error["message"], secret)
    return "The upstream failed mid-stream."
