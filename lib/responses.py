"""OpenAI's Responses API for callers: ``POST /api/v1/responses`` over any chat upstream.

Two halves, both free of I/O:

- :func:`parse_responses_body` turns a Responses request into the Chat Completions body the
  existing validator (``lib/request.parse_request``) checks, so one set of rules, limits and
  budgets applies to both paths. A 400 from that validator is renamed back to the Responses
  field the caller sent (``max_completion_tokens`` -> ``max_output_tokens``, ``messages[2]`` ->
  ``input[1]``). Stateful features (``previous_response_id``, ``store: true``, ``conversation``,
  ``background``, ``item_reference`` items) are refused with a 400 naming them: this function
  keeps no responses. docs/responses.md has the whole table.
- :class:`ResponsesStream` is an output format (the relay's protocol, lib/formats.py): it is fed
  parsed chat chunks and returns the Responses event stream the SDKs read (``event:`` + ``data:``
  with ``type`` and an increasing ``sequence_number``), and :class:`WholeResponses` gathers the
  same chunks into one ``Response`` object for callers that did not ask to stream.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, NamedTuple

from lib.config import RequestLimits
from lib.errors import APIError, RequestError
from lib.formats import SSE_HEADERS, Chunk, Template, WholeResponse
from lib.negotiate import requested_format
from lib.request import GenerateRequest, parse_request, parse_sized
from lib.sse import encode_comment

ROUTE = "responses"  # vercel.json: /api/v1/responses -> /api/generate?api=v1&route=responses

# Responses fields, and what each becomes in the chat body (None: handled by hand below).
RENAMED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "parallel_tool_calls": "parallel_tool_calls",
    "user": "user",
    "safety_identifier": "safety_identifier",
    "max_output_tokens": "max_completion_tokens",
}
HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "tools",
        "tool_choice",
        "reasoning",
        "text",
        # accepted only in their stateless form (checked in _check_stateless)
        "store",
        "previous_response_id",
        "conversation",
        "background",
        "include",
        "metadata",
        "truncation",
        "stream_options",
    }
)
MESSAGE_ROLES = ("user", "system", "developer", "assistant")
ENCRYPTED_REASONING = "reasoning.encrypted_content"
SUMMARIES = frozenset({"auto", "concise", "detailed"})
STATELESS = (
    "This function keeps no responses; send the whole conversation in input instead "
    "(docs/responses.md)."
)


class Converted:
    """The chat body built from a Responses request, and how to name its fields back. (Plain
    classes here: a slots dataclass costs ~0.5 ms of cold start to define.)"""

    __slots__ = ("body", "echo", "sources")

    def __init__(self, body: dict[str, Any], echo: dict[str, Any]) -> None:
        self.body = body
        self.echo = echo  # the Responses fields the Response object repeats
        # messages[k] came from sources[k]: (the Responses path, whether sub-paths line up)
        self.sources: list[tuple[str, bool]] = []


def _refuse(message: str, param: str) -> RequestError:
    return RequestError(message, param=param)


def _check_stateless(body: dict[str, Any]) -> None:
    """The stateful features, refused unless sent in their stateless form."""
    if body.get("store") not in (None, False):
        raise _refuse(f"store must be false or left out. {STATELESS}", "store")
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise _refuse(f"{name} is not supported. {STATELESS}", name)
    if body.get("background") not in (None, False):
        raise _refuse(
            "background mode is not supported: a response here lives only as long as its "
            "stream (docs/responses.md).",
            "background",
        )
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise _refuse("include must be a list.", "include")
        for index, name in enumerate(include):
            if name != ENCRYPTED_REASONING:
                raise _refuse(
                    f"include[{index}] is not supported: only {ENCRYPTED_REASONING} is (reasoning "
                    "items then carry encrypted_content null: no thoughts are kept or sent back "
                    "here). See docs/responses.md.",
                    f"include[{index}]",
                )
    if body.get("metadata") not in (None, {}):
        raise _refuse("metadata is kept only with stored responses; leave it out.", "metadata")
    if body.get("truncation") not in (None, "disabled"):
        raise _refuse(
            "truncation must be disabled: the conversation is sent as it is.", "truncation"
        )
    options = body.get("stream_options")
    if options is not None and options != {} and options != {"include_obfuscation": False}:
        raise _refuse(
            "stream_options may only hold include_obfuscation: false (no obfuscation is added).",
            "stream_options",
        )


def _text_parts(content: list[Any], where: str, role: str) -> list[dict[str, Any]]:
    """Responses content parts as chat parts, index for index (so a 400 names the same one)."""
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise _refuse(f"{at} must be an object.", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            allowed = {"type", "text"} | (
                {"annotations", "logprobs"} if kind == "output_text" else set()
            )
            _unknown(part, allowed, at)
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "refusal" and role == "assistant":
            _unknown(part, {"type", "refusal"}, at)
            parts.append({"type": "refusal", "refusal": part.get("refusal")})
        elif kind == "input_image":
            _unknown(part, {"type", "image_url", "detail", "file_id"}, at)
            if part.get("file_id") is not None:
                raise _refuse(
                    f"{at}.file_id: uploaded files are not available here; send image_url.",
                    f"{at}.file_id",
                )
            image: dict[str, Any] = {"url": part.get("image_url")}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _refuse(
                f"{at}: a {kind!r} part is not supported (input_text, input_image, and "
                "output_text in assistant messages are).",
                f"{at}.type",
            )
    return parts


def _unknown(item: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    for key in item:
        if key not in allowed:
            raise _refuse(
                f"{where}.{key} is not supported here (docs/responses.md).", f"{where}.{key}"
            )


class _Input:
    """Builds the chat messages from ``input`` items, remembering where each came from."""

    def __init__(self, out: Converted) -> None:
        self.out = out
        self.messages: list[dict[str, Any]] = out.body.setdefault("messages", [])

    def add(self, message: dict[str, Any], source: str, aligned: bool) -> None:
        self.messages.append(message)
        self.out.sources.append((source, aligned))

    def message(self, item: dict[str, Any], where: str) -> None:
        _unknown(item, {"type", "role", "content", "id", "status"}, where)
        role = item.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise _refuse(
                f"{where}.role must be one of {', '.join(MESSAGE_ROLES)}.", f"{where}.role"
            )
        content = item.get("content")
        if isinstance(content, list):
            parts = _text_parts(content, f"{where}.content", role)
            refusals = [p["refusal"] for p in parts if p["type"] == "refusal"]
            parts = [p for p in parts if p["type"] != "refusal"]
            message: dict[str, Any] = {"role": role, "content": parts}
            if refusals:
                message["refusal"] = "".join(r for r in refusals if isinstance(r, str))
                message["content"] = parts or None
            self.add(message, where, not refusals)
        else:
            self.add({"role": role, "content": content}, where, True)

    def function_call(self, item: dict[str, Any], where: str) -> None:
        _unknown(item, {"type", "call_id", "name", "arguments", "id", "status"}, where)
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant" and "refusal" not in last:
            last.setdefault("tool_calls", []).append(call)  # one assistant turn, several calls
            self.out.sources[-1] = (self.out.sources[-1][0], False)
            if last.get("content") == []:
                last["content"] = None
            return
        self.add({"role": "assistant", "content": None, "tool_calls": [call]}, where, False)

    def function_call_output(self, item: dict[str, Any], where: str) -> None:
        _unknown(item, {"type", "call_id", "output", "id", "status"}, where)
        output = item.get("output")
        if isinstance(output, list):
            parts = _text_parts(output, f"{where}.output", "tool")
            if any(p["type"] != "text" for p in parts):
                raise _refuse(
                    f"{where}.output may only hold input_text parts here.", f"{where}.output"
                )
            output = parts
        message = {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
        self.add(message, where, False)


def _input(value: Any, converted: Converted) -> None:
    builder = _Input(converted)
    if isinstance(value, str):
        builder.add({"role": "user", "content": value}, "input", False)
        return
    if not isinstance(value, list) or not value:
        raise _refuse("input must be a string or a non-empty list of items.", "input")
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _refuse(f"{where} must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            builder.message(item, where)
        elif kind == "function_call":
            builder.function_call(item, where)
        elif kind == "function_call_output":
            builder.function_call_output(item, where)
        elif kind == "reasoning":
            continue  # an earlier answer's thoughts: not sent back (as in chat history)
        elif kind == "item_reference":
            raise _refuse(f"{where}: item_reference is not supported. {STATELESS}", f"{where}.type")
        else:
            raise _refuse(
                f"{where}: a {kind!r} item is not supported (message, function_call, "
                "function_call_output and reasoning are).",
                f"{where}.type",
            )


def _tools(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _refuse("tools must be a list of function tools.", "tools")
    tools = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _refuse(
                f"{where}: only function tools are served here (got {kind!r}); built-in tools "
                "run inside OpenAI's own Responses service.",
                f"{where}.type",
            )
        _unknown(tool, {"type", "name", "description", "parameters", "strict"}, where)
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") == "function":
        _unknown(value, {"type", "name"}, "tool_choice")
        return {"type": "function", "function": {"name": value.get("name")}}
    return value  # the strings pass through; anything else is the validator's 400


def _reasoning(value: Any, body: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise _refuse("reasoning must be an object.", "reasoning")
    _unknown(value, {"effort", "summary"}, "reasoning")
    summary = value.get("summary")
    if summary is not None and (not isinstance(summary, str) or summary not in SUMMARIES):
        raise _refuse("reasoning.summary must be auto, concise or detailed.", "reasoning.summary")
    if value.get("effort") is not None:
        body["reasoning_effort"] = value["effort"]


def _text(value: Any, body: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise _refuse("text must be an object.", "text")
    _unknown(value, {"format", "verbosity"}, "text")
    fmt = value.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise _refuse("text.format must be an object.", "text.format")
        if fmt.get("type") == "json_schema":
            _unknown(fmt, {"type", "name", "schema", "strict", "description"}, "text.format")
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            _unknown(fmt, {"type"}, "text.format")
            body["response_format"] = {"type": fmt.get("type")}
    if value.get("verbosity") is not None:
        body["verbosity"] = value["verbosity"]


def convert(body: dict[str, Any], limits: RequestLimits) -> Converted:
    """The chat body for a Responses request (structure only: the validator checks values)."""
    for name in body:
        if name not in HANDLED and name not in RENAMED and name not in limits.ignored_params:
            raise _refuse(
                f"{name} is not a field this function accepts (docs/responses.md lists them).",
                name,
            )
    _check_stateless(body)
    chat: dict[str, Any] = {}
    converted = Converted(chat, {})
    for name in ("model", "stream"):
        if name in body:
            chat[name] = body[name]
    for name, target in RENAMED.items():
        if name in body and name not in limits.ignored_params:
            chat[target] = body[name]
            converted.echo[name] = body[name]
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _refuse("instructions must be a string.", "instructions")
        chat["messages"] = [{"role": "system", "content": instructions}]
        converted.sources.append(("instructions", False))
        converted.echo["instructions"] = instructions
    if "input" not in body:
        raise _refuse("The body needs input: a string or a list of items.", "input")
    _input(body["input"], converted)
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
        converted.echo["tools"] = body["tools"]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
        converted.echo["tool_choice"] = body["tool_choice"]
    if body.get("reasoning") is not None:
        _reasoning(body["reasoning"], chat)
        converted.echo["reasoning"] = body["reasoning"]
    if body.get("text") is not None:
        _text(body["text"], chat)
        converted.echo["text"] = body["text"]
    return converted


# The validator's names for the chat fields, and the Responses field each came from.
_BACK = (
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("reasoning_effort", "reasoning.effort"),
    ("verbosity", "text.verbosity"),
)


def _rename(error: RequestError, converted: Converted) -> RequestError:
    """The validator's 400, naming the Responses field the caller sent."""
    param = error.param
    message = error.message
    if param is None:
        return error
    new = param
    if param.startswith("messages[") and "]" in param:
        index = int(param[len("messages[") : param.index("]")])
        suffix = param[param.index("]") + 1 :]
        if index < len(converted.sources):
            source, aligned = converted.sources[index]
            new = source + (suffix if aligned else "")
    elif param == "messages":  # their number or their total length
        new = "input"
    elif param.startswith("tools[") and ".function" in param:
        new = param.replace(".function", "", 1)
    else:
        for chat, responses in _BACK:
            if param == chat or param.startswith(chat + "."):
                new = responses + param[len(chat) :] if responses != "text.format" else responses
                break
    if new == param:
        return error
    for chat, responses in _BACK:
        message = message.replace(chat, responses)
    message = message.replace(param, new).replace("messages", "input")
    return RequestError(message, param=new)


class ResponsesRequest(NamedTuple):
    """A validated Responses request: the chat request it became, and what its answer echoes."""

    request: GenerateRequest
    echo: dict[str, Any]


def parse_responses_body(raw: bytes, limits: RequestLimits) -> ResponsesRequest:
    """Parse, convert and validate a Responses body (a missing ``stream`` means one object, as
    on OpenAI's API), under :func:`lib.request.parse_sized`'s size rule."""

    def build(body: dict[str, Any]) -> ResponsesRequest:
        converted = convert(body, limits)
        try:
            request = parse_request(converted.body, limits, stream_default=False)
        except RequestError as error:
            raise _rename(error, converted) from None
        return ResponsesRequest(request, converted.echo)

    return parse_sized(raw, limits, build, lambda parsed: bool(parsed.request.images))


# --- the output: Response objects and the event stream -------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_usage(usage: Any) -> dict[str, Any] | None:
    """A chat ``usage`` object in the Responses shape (integers only)."""
    if not isinstance(usage, dict):
        return None

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = prompt.get("cached_tokens") if isinstance(prompt, dict) else 0
    reasoning = completion.get("reasoning_tokens") if isinstance(completion, dict) else 0
    inputs, outputs = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    return {
        "input_tokens": inputs,
        "input_tokens_details": {"cached_tokens": count(cached)},
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": count(reasoning)},
        "total_tokens": count(usage.get("total_tokens")) or inputs + outputs,
    }


# Chat finish reasons that end a response early, and the Responses reason for each.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Meta:
    """What every Response object of one answer repeats."""

    __slots__ = ("created_at", "echo", "id", "model")

    def __init__(self, id: str, created_at: int, model: str, echo: dict[str, Any]) -> None:
        self.id = id
        self.created_at = created_at
        self.model = model
        self.echo = echo

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        echo = self.echo
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": echo.get("reasoning", {"effort": None, "summary": None}),
            "store": False,
            "temperature": echo.get("temperature"),
            "text": echo.get("text", {"format": {"type": "text"}}),
            "tool_choice": echo.get("tool_choice", "auto"),
            "tools": echo.get("tools", []),
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "user": echo.get("user"),
            "metadata": {},
        }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": None}


def _call_item(
    item_id: str, status: str, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
RESPONSES_HEADERS = SSE_HEADERS


class _Call:
    __slots__ = ("arguments", "call_id", "item_id", "name", "output_index")

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.item_id = _id("fc")
        self.name = ""
        self.arguments: list[str] = []
        self.output_index = -1  # not announced yet (the name has not arrived)


class _Message:
    """The open message item: its content parts (output_text, refusal) in order of arrival."""

    __slots__ = ("index", "item_id", "parts")

    def __init__(self, index: int, item_id: str) -> None:
        self.index = index
        self.item_id = item_id
        self.parts: dict[str, list[str]] = {}

    def where(self, kind: str) -> dict[str, Any]:
        content_index = list(self.parts).index(kind)
        return {"item_id": self.item_id, "output_index": self.index, "content_index": content_index}

    def content(self) -> list[dict[str, Any]]:
        return [
            {"type": "refusal", "refusal": "".join(texts)}
            if kind == "refusal"
            else _text_part("".join(texts))
            for kind, texts in self.parts.items()
        ]


class ResponsesStream:
    """The Responses event stream, from chat chunks (sans-I/O: chunks in, bytes out).

    Items follow the model: a reasoning item while it thinks (summary text deltas), a message
    item for text (and refusal), a function_call item per tool call; an item is done when the
    next kind begins or the answer ends. ``close`` ends with ``response.completed`` (or
    ``response.incomplete`` for a length or content-filter stop), ``fail`` with an ``error``
    event and ``response.failed``, never ``response.completed``.
    """

    name = "responses"
    headers = RESPONSES_HEADERS
    relays_as_is = False

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # finished (or failed) items, by output_index
        self._reasoning: tuple[int, str, list[str]] | None = None
        self._text: _Message | None = None
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: Any = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return (
            b"event: "
            + kind.encode("ascii")
            + b"\ndata: "
            + _JSON.encode(data).encode("ascii")
            + b"\n\n"
        )

    def open(self) -> bytes:
        created = self.meta.response("in_progress", [])
        return self._event("response.created", response=created) + self._event(
            "response.in_progress", response=created
        )

    def _slot(self, item: dict[str, Any]) -> int:
        self._output.append(item)
        return len(self._output) - 1

    # -- chunks ----------------------------------------------------------------------------

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return b""
        choice: dict[str, Any] = choices[0]
        out: list[bytes] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                out.append(self._think(thought))
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    out.append(self._say(text, refusal=key == "refusal"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list) and calls:
                out.append(self._end_reasoning() + self._end_text())
                for position, item in enumerate(calls):
                    if isinstance(item, dict):
                        out.append(self._call(item, position))
        else:
            text = choice.get("text")
            if isinstance(text, str) and text:
                out.append(self._say(text, refusal=False))
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self._finish = reason
        return b"".join(out)

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """The relay's fast path for a plain content chunk: exactly what ``chunk`` writes."""
        return self._say(text, refusal=False) if text else b""

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        """The fast path for reasoning and tool-argument chunks (see :meth:`delta`)."""
        if kind != "arguments":
            return self._think(text) if text else b""
        index = template.like["choices"][0]["delta"]["tool_calls"][0]["index"]
        call = {"index": index, "function": {"arguments": text}}
        return self._end_reasoning() + self._end_text() + self._call(call, 0)

    def _think(self, text: str) -> bytes:
        out = b""
        if self._reasoning is None:
            out = self._end_text()
            item_id = _id("rs")
            index = self._slot(_reasoning_item(item_id, None))
            self._reasoning = (index, item_id, [])
            out += self._event(
                "response.output_item.added",
                output_index=index,
                item=_reasoning_item(item_id, None),
            )
            out += self._event(
                "response.reasoning_summary_part.added",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        index, item_id, texts = self._reasoning
        texts.append(text)
        return out + self._event(
            "response.reasoning_summary_text.delta",
            item_id=item_id,
            output_index=index,
            summary_index=0,
            delta=text,
        )

    def _end_reasoning(self) -> bytes:
        if self._reasoning is None:
            return b""
        index, item_id, texts = self._reasoning
        self._reasoning = None
        text = "".join(texts)
        where = {"item_id": item_id, "output_index": index, "summary_index": 0}
        item = self._output[index] = _reasoning_item(item_id, text)
        return (
            self._event("response.reasoning_summary_text.done", **where, text=text)
            + self._event(
                "response.reasoning_summary_part.done",
                **where,
                part={"type": "summary_text", "text": text},
            )
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _say(self, text: str, *, refusal: bool) -> bytes:
        out = self._end_reasoning()
        if self._text is None:
            item_id = _id("msg")
            index = self._slot(_message(item_id, "in_progress", []))
            self._text = _Message(index, item_id)
            out += self._event(
                "response.output_item.added",
                output_index=index,
                item=_message(item_id, "in_progress", []),
            )
        message = self._text
        kind = "refusal" if refusal else "output_text"
        if kind not in message.parts:
            message.parts[kind] = []
            part = {"type": "refusal", "refusal": ""} if refusal else _text_part("")
            out += self._event("response.content_part.added", **message.where(kind), part=part)
        message.parts[kind].append(text)
        if refusal:
            return out + self._event("response.refusal.delta", **message.where(kind), delta=text)
        return out + self._event(
            "response.output_text.delta", **message.where(kind), delta=text, logprobs=[]
        )

    def _end_text(self, status: str = "completed") -> bytes:
        if self._text is None:
            return b""
        message, self._text = self._text, None
        out = b""
        for kind, texts in message.parts.items():
            where = message.where(kind)
            whole = "".join(texts)
            if kind == "refusal":
                part: dict[str, Any] = {"type": "refusal", "refusal": whole}
                out += self._event("response.refusal.done", **where, refusal=whole)
            else:
                part = _text_part(whole)
                out += self._event("response.output_text.done", **where, text=whole, logprobs=[])
            out += self._event("response.content_part.done", **where, part=part)
        item = self._output[message.index] = _message(message.item_id, status, message.content())
        return out + self._event("response.output_item.done", output_index=message.index, item=item)

    def _call(self, item: dict[str, Any], position: int) -> bytes:
        index = item.get("index", position)
        if not isinstance(index, int):
            return b""
        call = self._calls.get(index)
        if call is None:
            call_id = item.get("id")
            call = self._calls[index] = _Call(
                call_id if isinstance(call_id, str) and call_id else f"call-{index}"
            )
        function = item.get("function")
        if not isinstance(function, dict):
            return b""
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
        fragment = function.get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        out = b""
        if call.output_index < 0:
            call.arguments.append(fragment)
            if not call.name:
                return b""  # announced once its name arrives
            out = self._announce(call)
            fragment = "".join(call.arguments)
        else:
            call.arguments.append(fragment)
        if fragment:
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=call.item_id,
                output_index=call.output_index,
                delta=fragment,
            )
        return out

    def _announce(self, call: _Call) -> bytes:
        item = _call_item(call.item_id, "in_progress", call.call_id, call.name, "")
        call.output_index = self._slot(item)
        return self._event("response.output_item.added", output_index=call.output_index, item=item)

    def _end_calls(self) -> bytes:
        out = b""
        for call in self._calls.values():
            if call.output_index < 0:
                call.name = call.name or "unknown"
                out += self._announce(call)
            arguments = "".join(call.arguments)
            where = {"item_id": call.item_id, "output_index": call.output_index}
            out += self._event(
                "response.function_call_arguments.done",
                **where,
                name=call.name,
                arguments=arguments,
            )
            item = _call_item(call.item_id, "completed", call.call_id, call.name, arguments)
            self._output[call.output_index] = item
            out += self._event(
                "response.output_item.done", output_index=call.output_index, item=item
            )
        self._calls.clear()
        return out

    # -- ends --------------------------------------------------------------------------------

    def close(self) -> bytes:
        incomplete = INCOMPLETE.get(self._finish or "")
        out = self._end_reasoning() + self._end_text("incomplete" if incomplete else "completed")
        out += self._end_calls()
        usage = response_usage(self._usage)
        if incomplete is not None:
            final = self.meta.response(
                "incomplete", self._output, usage=usage, incomplete=incomplete
            )
            return out + self._event("response.incomplete", response=final)
        final = self.meta.response("completed", self._output, usage=usage)
        return out + self._event("response.completed", response=final)

    def fail(self, error: APIError) -> bytes | None:
        body = error.body()
        code = body["type"]
        failed = {"code": code, "message": error.message}
        final = self.meta.response(
            "failed", self._output, error=failed, usage=response_usage(self._usage)
        )
        return self._event(
            "error",
            code=code,
            message=error.message,
            param=error.param,
            error={"type": code, "code": code, "message": error.message, "param": error.param},
        ) + self._event("response.failed", response=final)

    def keepalive(self) -> bytes | None:
        return encode_comment("keep-alive")  # the SDKs' SSE readers skip comments


class WholeResponses(WholeResponse):
    """One ``Response`` object for a caller that did not ask to stream: the chunks are gathered
    as for a ``chat.completion`` (lib/formats.WholeResponse), then rebuilt as Responses output."""

    def __init__(self, meta: Meta) -> None:
        super().__init__(shape="chat")
        self.meta = meta

    def response(self) -> dict[str, Any]:
        completion = self.body()
        message = completion["choices"][0]["message"]
        finish = completion["choices"][0]["finish_reason"]
        incomplete = INCOMPLETE.get(finish or "")
        output: list[dict[str, Any]] = []
        thought = message.get("reasoning_content") or message.get("reasoning")
        if thought:
            output.append(_reasoning_item(_id("rs"), thought))
        parts: list[dict[str, Any]] = []
        if message.get("content"):
            parts.append(_text_part(message["content"]))
        if message.get("refusal"):
            parts.append({"type": "refusal", "refusal": message["refusal"]})
        if parts:
            output.append(_message(_id("msg"), "incomplete" if incomplete else "completed", parts))
        for call in message.get("tool_calls") or ():
            function = call["function"]
            output.append(
                _call_item(
                    _id("fc"), "completed", call["id"], function["name"], function["arguments"]
                )
            )
        usage = response_usage(completion.get("usage"))
        status = "incomplete" if incomplete else "completed"
        return self.meta.response(status, output, usage=usage, incomplete=incomplete)

    def close(self) -> bytes:
        return json.dumps(self.response(), separators=(",", ":")).encode("ascii")


def responses_format(parsed: ResponsesRequest, created_at: int) -> ResponsesStream | WholeResponses:
    """The output format for a Responses caller: the event stream, or one object."""
    meta = Meta(_id("resp"), created_at, parsed.request.model, parsed.echo)
    if parsed.request.stream:
        return ResponsesStream(meta)
    return WholeResponses(meta)


def parse(
    raw: bytes, limits: RequestLimits, query: bytes, created_at: int
) -> tuple[GenerateRequest, ResponsesStream | WholeResponses]:
    """The handler's one call for ``/api/v1/responses``: the validated request and its format."""
    if requested_format(query) is not None:
        raise RequestError(
            "format does not apply to /api/v1/responses: it always answers in the Responses "
            "API's own shape.",
            param="format",
        )
    parsed = parse_responses_body(raw, limits)
    return parsed.request, responses_format(parsed, created_at)
