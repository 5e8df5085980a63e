"""Which output format a caller gets: a pure function of what the caller can control.

First match wins (docs/protocol.md section 1 explains why: neither AI SDK hook sends ``Accept``, and
a browser cannot set ``User-Agent``):

1. the ``format`` query parameter: ``openai``, ``ui`` or ``text`` (anything else is a 400);
2. the body's shape: ``messages`` whose items carry ``parts`` come from ``useChat`` -> ``ui``;
3. the ``Accept`` header: ``text/plain`` preferred over ``text/event-stream`` -> ``text``;
4. the deployment's ``DEFAULT_FORMAT`` (``openai`` unless set).

``openai`` follows the request's shape: ``prompt`` gets completion chunks, ``messages`` chat;
a caller that did not ask to stream gets one JSON object of that shape instead (``stream:
false`` anywhere; a body without ``stream`` on the ``/api/v1`` paths, as the OpenAI API does).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from lib.config import OUTPUT_FORMATS
from lib.errors import RequestError
from lib.formats import Format, OpenAIChat, OpenAICompletion, WholeResponse
from lib.request import GenerateRequest


def requested_format(query_string: bytes) -> str | None:
    """The ``format`` query parameter, checked; ``None`` when absent."""
    query = query_string.decode("latin-1")
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "format"]
    if not values:
        return None
    if len(set(values)) > 1 or values[0] not in OUTPUT_FORMATS:
        shown = ", ".join(repr(v) for v in dict.fromkeys(values))
        names = ", ".join(OUTPUT_FORMATS)
        raise RequestError(f"format must be one of {names} (got {shown}).", param="format")
    return values[0]


def v1_semantics(query_string: bytes) -> bool:
    """True for the OpenAI-compatible paths: vercel.json's ``/api/v1/*`` rewrites add
    ``api=v1``, and there the OpenAI API's rules hold (no ``stream`` means one JSON object)."""
    query = query_string.decode("latin-1")
    return ("api", "v1") in parse_qsl(query, keep_blank_values=True)


def v1_route(query_string: bytes) -> tuple[str, str] | None:
    """``(route, model)`` for the ``/api/v1`` paths other than completions (vercel.json's
    rewrites add ``route``: ``models``, ``model`` with the id in ``model``, or ``none``)."""
    pairs = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    route = pairs.get("route")
    if route is None or pairs.get("api") != "v1":
        return None
    return route, pairs.get("model", "")


def check_fit(request: GenerateRequest, name: str) -> None:
    """Refuse what the chosen format cannot carry, rather than drop it (a 400 naming it)."""
    if name in ("openai", "json"):
        return
    if not request.stream:
        raise RequestError(
            f"The {name} format only streams; leave stream out or send stream: true.",
            param="stream",
        )
    if name == "text" and request.has_tools:
        raise RequestError(
            "The text format cannot carry a tool call; use the ui or openai format for tools.",
            param="tools",
        )
    if request.options.get("logprobs"):
        raise RequestError(
            f"The {name} format cannot carry logprobs; use the openai format.", param="logprobs"
        )


def _quality(accept: str, media_type: str) -> float:
    """The q-value ``accept`` gives exactly ``media_type`` (0 when it is not listed)."""
    for item in accept.split(","):
        name, *params = item.split(";")
        if name.strip().lower() != media_type:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value.strip())
                except ValueError:
                    return 0.0
        return 1.0
    return 0.0


def prefers_text(accept: str | None) -> bool:
    """True when ``Accept`` asks for ``text/plain`` more than for an event stream. Wildcards
    (``*/*``, what fetch and curl send) express no preference."""
    if not accept:
        return False
    plain = _quality(accept, "text/plain")
    return plain > 0 and plain > _quality(accept, "text/event-stream")


def choose_format(
    query_string: bytes, request: GenerateRequest, accept: str | None, default: str
) -> Format:
    """The format for this request (see the module docstring for the order)."""
    name = requested_format(query_string)
    if name is None:
        if request.ui_messages:
            name = "ui"
        elif prefers_text(accept):
            name = "text"
        else:
            name = default
    if name in ("ui", "text"):
        # The AI SDK's formats are imported when first asked for: a deployment whose callers
        # never use them does not compile lib/aisdk.py at every cold start.
        from lib.aisdk import TextStream, UIMessageStream

        return UIMessageStream() if name == "ui" else TextStream()
    if not request.stream:
        return WholeResponse(shape=request.shape)
    if request.shape == "completion":
        return OpenAICompletion(include_usage=request.include_usage)
    return OpenAIChat(include_usage=request.include_usage)
