"""``UPSTREAM_API=responses``: call ``{OPENAI_BASE_URL}/responses`` instead of Chat Completions.

Two pieces, so the relay and every output format stay as they are:

- :func:`build_responses_request` writes the validated request (chat shaped, whichever path it
  came in by) as a Responses request. What the Responses API has no field for (``stop``,
  ``seed``, penalties, logprobs, a message ``name``) is a 400 naming it, never dropped.
- :class:`ChunksFromResponses` (sans-I/O: SSE events in, bytes out) turns the upstream's
  Responses events into the chat chunks the relay already interprets: text, reasoning summary
  text as ``reasoning_content``, function calls as ``tool_calls`` by index, the end as a finish
  reason, usage and ``[DONE]``, a failure as an in-band ``error``. :class:`ResponsesUpstream`
  wraps the upstream stream with it.
"""

from __future__ import annotations

import json
from typing import Any

from lib.config import UpstreamSettings
from lib.errors import RequestError
from lib.request import GenerateRequest, UpstreamRequest
from lib.sse import Event, SSEDecoder, encode_event
from lib.upstream import DRAIN_SECONDS, UpstreamStream

# Chat fields the Responses API cannot take: refused in this mode (docs/responses.md).
NOT_IN_RESPONSES = (
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
)
SAME_NAME = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier")


def _unsupported(name: str) -> RequestError:
    return RequestError(
        f"{name} is not available on this deployment: its upstream speaks the Responses API "
        "(UPSTREAM_API=responses), which has no such field.",
        param=name,
    )


def _content(content: Any) -> Any:
    """Chat content as Responses content: a string stays one, parts become input parts."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if part["type"] == "text":
            parts.append({"type": "input_text", "text": part["text"]})
        else:
            image = part["image_url"]
            converted = {"type": "input_image", "image_url": image["url"]}
            converted["detail"] = image.get("detail", "auto")
            parts.append(converted)
    return parts


def _input(messages: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if "name" in message:
            raise RequestError(
                f"messages[{index}].name is not available with a Responses upstream "
                "(UPSTREAM_API=responses).",
                param=f"messages[{index}].name",
            )
        role = message["role"]
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": message["content"],
                }
            )
            continue
        if role == "assistant":
            text = message.get("content") or message.get("refusal")
            if text:
                items.append({"role": "assistant", "content": text})
            for call in message.get("tool_calls") or ():
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function["arguments"],
                    }
                )
            continue
        items.append({"role": role, "content": _content(message["content"])})
    return items


def build_responses_request(
    request: GenerateRequest, upstream: UpstreamSettings, *, safety_id: str | None = None
) -> UpstreamRequest:
    """The one request sent to ``{OPENAI_BASE_URL}/responses``: streamed, never stored."""
    options = request.options
    for name in NOT_IN_RESPONSES:
        if name in options:
            raise _unsupported(name)
    payload: dict[str, Any] = {"model": request.model}
    payload["input"] = request.prompt if request.prompt is not None else _input(request.messages)
    payload["max_output_tokens"] = request.max_tokens
    for name in SAME_NAME:
        if name in options:
            payload[name] = options[name]
    # n is 1 or absent (lib/request.py): one answer is what a Responses call gives anyway.
    if "tools" in options:
        payload["tools"] = [{"type": "function", **t["function"]} for t in options["tools"]]
    choice = options.get("tool_choice")
    if isinstance(choice, dict):
        payload["tool_choice"] = {"type": "function", "name": choice["function"]["name"]}
    elif choice is not None:
        payload["tool_choice"] = choice
    text: dict[str, Any] = {}
    fmt = options.get("response_format")
    if fmt is not None:
        if fmt["type"] == "json_schema":
            text["format"] = {"type": "json_schema", **fmt["json_schema"]}
        else:
            text["format"] = {"type": fmt["type"]}
    if "verbosity" in options:
        text["verbosity"] = options["verbosity"]
    if text:
        payload["text"] = text
    if "reasoning_effort" in options:
        # summary auto: the only way a Responses model shows its thinking at all.
        payload["reasoning"] = {"effort": options["reasoning_effort"], "summary": "auto"}
    if safety_id is not None:
        if "safety_identifier" in options:
            raise RequestError(
                "safety_identifier is set by this deployment for authenticated clients.",
                param="safety_identifier",
            )
        payload["safety_identifier"] = safety_id
    payload["store"] = False
    payload["stream"] = True
    if request.obfuscation is False:  # true is the default: nothing to say
        payload["stream_options"] = {"include_obfuscation": False}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return UpstreamRequest(upstream.url("responses"), body, "responses")


_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A Responses ``usage`` object in the chat shape the budgets and log read."""
    if not isinstance(usage, dict):
        return None
    result: dict[str, Any] = {}
    for source, target in (
        ("input_tokens", "prompt_tokens"),
        ("output_tokens", "completion_tokens"),
        ("total_tokens", "total_tokens"),
    ):
        if isinstance(usage.get(source), int):
            result[target] = usage[source]
    for source, key, target, name in (
        ("input_tokens_details", "cached_tokens", "prompt_tokens_details", "cached_tokens"),
        (
            "output_tokens_details",
            "reasoning_tokens",
            "completion_tokens_details",
            "reasoning_tokens",
        ),
    ):
        details = usage.get(source)
        if isinstance(details, dict) and isinstance(details.get(key), int):
            result[target] = {name: details[key]}
    return result


class ChunksFromResponses:
    """Responses events -> chat chunk events (see the module docstring)."""

    def __init__(self) -> None:
        self._id = ""
        self._created = 0
        self._model = ""
        self._calls: dict[str, int] = {}  # function_call item id (or output index) -> index
        self._count = 0
        self._streamed: set[int] = set()  # calls whose arguments were sent
        self.ended = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + _JSON.encode(chunk).encode("ascii") + b"\n\n"

    def _end(self, finish: str, response: Any) -> bytes:
        self.ended = True
        out = self._chunk({}, finish)
        usage = chat_usage(response.get("usage") if isinstance(response, dict) else None)
        if usage is not None:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage,
            }
            out += b"data: " + _JSON.encode(chunk).encode("ascii") + b"\n\n"
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def _error(message: Any) -> bytes:
        text = message if isinstance(message, str) else "The upstream response failed."
        return b"data: " + _JSON.encode({"error": {"message": text}}).encode("ascii") + b"\n\n"

    def feed(self, events: list[Event]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if not event.data or self.ended:
                continue
            try:
                data = json.loads(event.data)
            except (ValueError, RecursionError):
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                out.append(encode_event(event.data))  # the relay names the defect
                continue
            out.append(self._one(data["type"], data))
        return b"".join(out)

    def _call_index(self, data: dict[str, Any]) -> int | None:
        key = data.get("item_id")
        if not isinstance(key, str):
            key = f"#{data.get('output_index')}"
        return self._calls.get(key)

    def _one(self, kind: str, data: dict[str, Any]) -> bytes:
        if kind in ("response.created", "response.in_progress"):
            response = data.get("response")
            if isinstance(response, dict):
                self._id = str(response.get("id", ""))[:200]
                created = response.get("created_at")
                self._created = created if isinstance(created, int) else 0
                self._model = str(response.get("model", ""))[:200]
            return b""
        delta = data.get("delta")
        if kind == "response.output_text.delta" and isinstance(delta, str):
            return self._chunk({"content": delta})
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._chunk({"reasoning_content": delta}) if isinstance(delta, str) else b""
        if kind == "response.refusal.delta" and isinstance(delta, str):
            return self._chunk({"refusal": delta})
        if kind == "response.output_item.added":
            item = data.get("item")
            if not isinstance(item, dict) or item.get("type") != "function_call":
                return b""
            index = self._count
            self._count += 1
            key = item.get("id")
            self._calls[key if isinstance(key, str) else f"#{data.get('output_index')}"] = index
            self._calls.setdefault(f"#{data.get('output_index')}", index)
            arguments = item.get("arguments") or ""
            if arguments:
                self._streamed.add(index)  # already whole: a later .done repeats them
            function = {"name": item.get("name"), "arguments": arguments}
            call = {"index": index, "id": item.get("call_id"), "type": "function"}
            return self._chunk({"tool_calls": [{**call, "function": function}]})
        if kind == "response.function_call_arguments.delta" and isinstance(delta, str):
            found = self._call_index(data)
            if found is None:
                return b""
            self._streamed.add(found)
            return self._chunk({"tool_calls": [{"index": found, "function": {"arguments": delta}}]})
        if kind == "response.function_call_arguments.done":
            # Some servers send a call's arguments only whole, in .done: then they go out here.
            found = self._call_index(data)
            arguments = data.get("arguments")
            if found is None or found in self._streamed or not isinstance(arguments, str):
                return b""
            self._streamed.add(found)
            fragment = {"index": found, "function": {"arguments": arguments}}
            return self._chunk({"tool_calls": [fragment]})
        if kind == "response.completed":
            return self._end("tool_calls" if self._count else "stop", data.get("response"))
        if kind == "response.incomplete":
            response = data.get("response")
            details = response.get("incomplete_details") if isinstance(response, dict) else None
            reason = details.get("reason") if isinstance(details, dict) else None
            return self._end(INCOMPLETE_REASONS.get(str(reason), "length"), response)
        if kind == "response.failed":
            response = data.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            return self._error(error.get("message") if isinstance(error, dict) else None)
        if kind == "error":
            nested = data.get("error")
            message = nested.get("message") if isinstance(nested, dict) else data.get("message")
            return self._error(message)
        return b""  # lifecycle and .done events: nothing the chunks lack


class ResponsesUpstream(UpstreamStream):
    """An upstream Responses stream, read as the chat chunk stream the relay expects."""

    __slots__ = ("_convert", "_decoder", "_inner", "_over")

    def __init__(self, inner: UpstreamStream, max_line_bytes: int) -> None:
        self._init_read_timer()  # its own read_before timer; the inner stream's is never armed
        self._inner = inner
        self._decoder = SSEDecoder(max_line_bytes)
        self._convert = ChunksFromResponses()
        self._over = False

    read_before = UpstreamStream._read_before_via_read  # through read() below, not readany

    async def read(self) -> bytes:
        while not self._over:
            raw = await self._inner.read()
            if not raw:
                self._over = True
                return self._convert.feed(self._decoder.flush())
            out = self._convert.feed(self._decoder.feed(raw))
            if out:
                return out
        return b""

    def close(self) -> None:
        self._stop_timer()
        self._inner.close()

    def release(self) -> None:
        self._stop_timer()
        self._inner.release()

    async def finish(self, within: float = DRAIN_SECONDS) -> None:
        self._stop_timer()
        await self._inner.finish(within)
