"""Parse and validate the caller's JSON body, and build the one request we forward upstream.

Parsing is strict where Python's ``json`` is lenient (duplicate keys, NaN/Infinity, numbers of
any size, lone surrogates, any depth): each of those is the caller's mistake and becomes a 400,
never a 500 later on. Only the fields listed here are forwarded; everything else is dropped, and
the caller never chooses the upstream URL, key or headers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lib.config import Settings
from lib.errors import RequestError

Shape = Literal["completion", "chat"]

ROLES = frozenset({"system", "user", "assistant"})
MAX_DEPTH = 32
MAX_INT_DIGITS = 20
MAX_STOP = 4


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A validated request: what to ask for, and how the caller wants the answer shaped."""

    shape: Shape
    model: str
    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    include_usage: bool = False
    ui_messages: bool = False  # the body came from the AI SDK's useChat (messages with parts)

    def text_for_log(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    body: bytes
    endpoint: Literal["chat", "completions"]


# --- strict JSON ------------------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RequestError(f"The JSON body repeats the key {key!r}.", param=key)
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise RequestError(f"The JSON body contains {name}, which is not valid JSON.")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError("The JSON body contains an integer that is too large.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError("The JSON body contains a number that is too large.")
    return value


def _check_tree(value: Any, depth: int = 0) -> None:
    """Bound the nesting and reject lone surrogates (they cannot be re-encoded as UTF-8)."""
    if depth > MAX_DEPTH:
        raise RequestError(f"The JSON body is nested more than {MAX_DEPTH} levels deep.")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("The JSON body contains an unpaired surrogate escape.") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a UTF-8 JSON object strictly; every defect is a RequestError (400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("The request body is not valid UTF-8.") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except RecursionError:
        raise RequestError(f"The JSON body is nested more than {MAX_DEPTH} levels deep.") from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column "
            f"{exc.colno})."
        ) from None
    except ValueError:  # int() beyond sys.get_int_max_str_digits, and similar
        raise RequestError("The JSON body contains a number that cannot be used.") from None
    if not isinstance(value, dict):
        raise RequestError('The JSON body must be an object, like {"prompt": "..."}.')
    _check_tree(value)
    return value


# --- fields -----------------------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a number.", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}.", param=name)
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer.", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}.", param=name)
    return value


def _stop(body: dict[str, Any]) -> str | list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_STOP
        and all(isinstance(item, str) and item for item in value)
    ):
        return list(value)
    raise RequestError(
        f"stop must be a non-empty string or a list of 1 to {MAX_STOP} non-empty strings.",
        param="stop",
    )


def _content(value: Any, param: str) -> str:
    """Message content: a string, or OpenAI/AI SDK text parts joined (other parts: 400)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(f"{param} may only hold text parts.", param=param)
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{param} has a text part without a string text.", param=param)
            texts.append(text)
        return "".join(texts)
    raise RequestError(f"{param} must be a string.", param=param)


def _ui_parts(parts: Any, param: str) -> str:
    """useChat parts: text parts become the content; reasoning, files, tools, sources, step and
    data parts are dropped (the model sees only text), as documented in the README."""
    if not isinstance(parts, list):
        raise RequestError(f"{param} must be a list.", param=param)
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(f"{param} items must be objects with a type.", param=param)
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{param} has a text part without a string text.", param=param)
            texts.append(text)
    return "".join(texts)


def _messages(value: Any, settings: Settings) -> tuple[tuple[dict[str, str], ...], bool]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list.", param="messages")
    if len(value) > settings.max_messages:
        raise RequestError(
            f"messages may hold at most {settings.max_messages} items.", param="messages"
        )
    result: list[dict[str, str]] = []
    ui = False
    for index, item in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(item, dict):
            raise RequestError(f"{param} must be an object.", param=param)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or dict is unhashable
            raise RequestError(
                f"{param}.role must be one of system, user, assistant.", param=f"{param}.role"
            )
        if "parts" in item and "content" not in item:
            ui = True
            content = _ui_parts(item["parts"], f"{param}.parts")
            if not content:
                continue  # a message of only non-text parts says nothing to a text model
        else:
            content = _content(item.get("content"), f"{param}.content")
        result.append({"role": role, "content": content})
    if not result:
        raise RequestError("messages hold no text.", param="messages")
    total = sum(len(m["content"]) for m in result)
    if total > settings.max_prompt_chars:
        raise RequestError(
            f"messages hold {total} characters; the limit is {settings.max_prompt_chars}.",
            param="messages",
        )
    return tuple(result), ui


def parse_request(body: dict[str, Any], settings: Settings) -> GenerateRequest:
    """Validate a parsed body against the deployment's limits."""
    prompt = body.get("prompt")
    messages = body.get("messages")
    if prompt is not None and messages is not None:
        raise RequestError("Send either prompt or messages, not both.", param="prompt")
    if prompt is None and messages is None:
        raise RequestError(
            'The body needs a prompt ({"prompt": "..."}) or a messages list.', param="prompt"
        )
    if body.get("stream") is False:
        raise RequestError(
            "This endpoint only streams; send stream: true or leave it out.", param="stream"
        )

    model = body.get("model", settings.default_model)
    if not isinstance(model, str) or model not in settings.allowed_models:
        allowed = ", ".join(sorted(settings.allowed_models))
        raise RequestError(f"model must be one of: {allowed}.", param="model")

    max_tokens = _integer(body, "max_tokens", 1, settings.max_tokens)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, settings.max_tokens)

    options: dict[str, Any] = {}
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        number = _number(body, name, low, high)
        if number is not None:
            options[name] = number
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    if seed is not None:
        options["seed"] = seed
    stop = _stop(body)
    if stop is not None:
        options["stop"] = stop

    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise RequestError("stream_options must be an object.", param="stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage") is True)

    max_tokens = max_tokens or settings.max_tokens
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("prompt must be a non-empty string.", param="prompt")
        if len(prompt) > settings.max_prompt_chars:
            raise RequestError(
                f"prompt holds {len(prompt)} characters; the limit is {settings.max_prompt_chars}.",
                param="prompt",
            )
        return GenerateRequest(
            shape="completion",
            model=model,
            max_tokens=max_tokens,
            prompt=prompt,
            options=options,
            include_usage=include_usage,
        )
    parsed, ui = _messages(messages, settings)
    return GenerateRequest(
        shape="chat",
        model=model,
        max_tokens=max_tokens,
        messages=parsed,
        options=options,
        include_usage=include_usage,
        ui_messages=ui,
    )


def build_upstream_request(request: GenerateRequest, settings: Settings) -> UpstreamRequest:
    """The one request we forward: our URL, our fields, always ``stream: true``."""
    payload: dict[str, Any] = {"model": request.model}
    use_completions = request.prompt is not None and settings.prompt_endpoint == "completions"
    if use_completions:
        payload["prompt"] = request.prompt
    elif request.prompt is not None:
        payload["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        payload["messages"] = list(request.messages)
    payload["max_tokens"] = request.max_tokens
    payload.update(request.options)
    payload["stream"] = True
    if settings.upstream_include_usage:
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if use_completions:
        return UpstreamRequest(settings.completions_url, body, "completions")
    return UpstreamRequest(settings.chat_url, body, "chat")
