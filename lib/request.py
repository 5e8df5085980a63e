"""Parse and validate the caller's JSON body, and build the one request we forward upstream.

Parsing is strict where Python's ``json`` is lenient (duplicate keys, NaN/Infinity, numbers of
any size, lone surrogates, any depth): each of those is the caller's mistake and becomes a 400,
never a 500 later on. Every field is either forwarded under a rule of :data:`PARAMS` (checked
here, and allowed by the deployment's ``ALLOWED_PARAMS``), ignored because it is the AI SDK's
transport (:data:`UI_TRANSPORT_FIELDS`) or the deployment listed it in ``IGNORED_PARAMS``, or
refused with a 400 whose ``param`` names it; docs/chat-completions.md has the table. The caller
never chooses the upstream URL, key or headers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from lib.config import OPTIONAL_PARAMS, RequestLimits, UpstreamSettings
from lib.errors import BodyTooLarge, RequestError
from lib.messages import TOOL_NAME, ImagePolicy, collect_messages

Shape = Literal["completion", "chat"]

MAX_DEPTH = 32
MAX_INT_DIGITS = 20
MAX_STOP = 4


class GenerateRequest(NamedTuple):
    """A validated request: what to ask for, and how the caller wants the answer shaped."""

    shape: Shape
    model: str
    max_tokens: int  # what is sent upstream: the caller's value, else the deployment's cap
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] = ()
    options: Mapping[str, Any] = MappingProxyType({})
    include_usage: bool = False
    # stream_options.include_obfuscation as the caller sent it (None: not sent), forwarded
    obfuscation: bool | None = None
    ui_messages: bool = False  # the body came from the AI SDK's useChat (messages with parts)
    stream: bool = True  # False: one JSON object, aggregated from the upstream stream
    message_chars: int = 0  # text in the messages (tool calls and results included)
    message_bytes: int = 0  # the same text's UTF-8 bytes (the token estimate's bound)
    images: int = 0
    low_detail_images: int = 0

    @property
    def has_tools(self) -> bool:
        return "tools" in self.options

    def text_for_log(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(_loggable(m) for m in self.messages)


def _loggable(message: dict[str, Any]) -> str:
    """One message for ``LOG_PROMPTS``: its text, tool calls as JSON, images as ``[image]`` (a
    data URL would fill the log)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] if p["type"] == "text" else "[image]" for p in content)
    text = content if isinstance(content, str) else ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


class UpstreamRequest(NamedTuple):
    url: str
    body: bytes
    endpoint: Literal["chat", "completions", "responses"]


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

BASE_FIELDS = frozenset({"prompt", "messages", "model", "stream"})
# What the AI SDK's chat transport adds to every useChat body (DefaultChatTransport): the chat's
# id, why it sends (submit-message, regenerate-message) and the message to regenerate. They
# steer the client, not the model, so they are ignored (only in useChat-shaped bodies).
UI_TRANSPORT_FIELDS = frozenset({"id", "trigger", "messageId"})
REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
VERBOSITIES = frozenset({"low", "medium", "high"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
MAX_TOOLS = 128
MAX_TOP_LOGPROBS = 20
MAX_USER_CHARS = 256
# The token budget's allowance per image (no image decoding here): OpenAI bills a 1024x1024
# image at high detail 765 tokens and a large one up to about 1,100; low detail is 85.
IMAGE_TOKENS = 1100
LOW_DETAIL_IMAGE_TOKENS = 85


def image_token_allowance(request: GenerateRequest) -> int:
    """The prompt tokens the request's images may cost, for the token budget's estimate."""
    high = request.images - request.low_detail_images
    return high * IMAGE_TOKENS + request.low_detail_images * LOW_DETAIL_IMAGE_TOKENS


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


def _choice(body: dict[str, Any], name: str, allowed: frozenset[str]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(sorted(allowed))}.", param=name)
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


def _tools(value: Any) -> list[dict[str, Any]]:
    """``tools``: function tools, forwarded intact once their name and parameters check out."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TOOLS:
        raise RequestError(f"tools must be a list of 1 to {MAX_TOOLS} tools.", param="tools")
    names: set[str] = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise RequestError(f'{where} must be {{"type": "function", ...}}.', param=where)
        function = tool.get("function")
        if not isinstance(function, dict):
            raise RequestError(f"{where}.function must be an object.", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise RequestError(
                f"{where}.function.name must be 1 to 64 letters, digits, _ or -.",
                param=f"{where}.function.name",
            )
        if name in names:
            raise RequestError(f"{where} repeats the tool {name!r}.", param=f"{where}.function")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise RequestError(
                f"{where}.function.parameters must be a JSON Schema object.",
                param=f"{where}.function.parameters",
            )
    return value


def _tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> Any:
    if isinstance(value, str) and value in TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        names = {t["function"]["name"] for t in tools or ()}
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name in names:
            return value
        raise RequestError(
            "tool_choice names a function that is not in tools.", param="tool_choice"
        )
    raise RequestError(
        'tool_choice must be none, auto, required or {"type": "function", "function": '
        '{"name": ...}}.',
        param="tool_choice",
    )


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in RESPONSE_FORMATS:
        raise RequestError(
            "response_format.type must be text, json_object or json_schema.",
            param="response_format",
        )
    checked: dict[str, Any] = value
    if kind == "json_schema":
        schema = checked.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise RequestError(
                "response_format.json_schema must be an object with a name (and a schema).",
                param="response_format.json_schema",
            )
    return checked


def _check_fields(body: dict[str, Any], limits: RequestLimits, ui: bool) -> None:
    """Every field is known, allowed here, or ignored by rule; else a 400 naming it."""
    for name in body:
        if name in BASE_FIELDS or name in limits.ignored_params:
            continue
        if ui and name in UI_TRANSPORT_FIELDS:
            continue
        if name not in OPTIONAL_PARAMS:
            raise RequestError(
                f"{name} is not a field this function accepts (docs/chat-completions.md lists "
                "them).",
                param=name,
            )
        if name not in limits.allowed_params and body[name] is not None:
            raise RequestError(f"{name} is turned off on this deployment.", param=name)


def _max_tokens(body: dict[str, Any], limits: RequestLimits) -> int:
    given = _integer(body, "max_tokens", 1, limits.max_tokens)
    completion = _integer(body, "max_completion_tokens", 1, limits.max_tokens)
    if given is not None and completion is not None and given != completion:
        raise RequestError(
            "Send max_tokens or max_completion_tokens, not both with different values.",
            param="max_tokens",
        )
    return completion or given or limits.max_tokens


def _options(body: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The optional fields, checked, in the form they are forwarded."""
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
    # n: one choice only. Budgets reserve max_tokens once, the loop detector and every format
    # follow one choice, and ui/text could only interleave several into one text.
    if _integer(body, "n", 1, 1) is not None:
        options["n"] = 1
    tools = body.get("tools")
    if tools is not None:
        if shape == "completion":
            raise RequestError(
                "tools need a messages request: a prompt caller's completion stream cannot "
                "carry a tool call.",
                param="tools",
            )
        options["tools"] = _tools(tools)
    if body.get("tool_choice") is not None:
        options["tool_choice"] = _tool_choice(body["tool_choice"], options.get("tools"))
    if body.get("parallel_tool_calls") is not None:
        if not isinstance(body["parallel_tool_calls"], bool):
            raise RequestError(
                "parallel_tool_calls must be true or false.", param="parallel_tool_calls"
            )
        options["parallel_tool_calls"] = body["parallel_tool_calls"]
    for name in ("tool_choice", "parallel_tool_calls"):
        if name in options and "tools" not in options:
            raise RequestError(f"{name} needs tools.", param=name)
    if body.get("response_format") is not None:
        options["response_format"] = _response_format(body["response_format"])
    for name, allowed in (("reasoning_effort", REASONING_EFFORTS), ("verbosity", VERBOSITIES)):
        value = _choice(body, name, allowed)
        if value is not None:
            options[name] = value
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str) or not 1 <= len(user) <= MAX_USER_CHARS:
            raise RequestError(
                f"user must be a string of 1 to {MAX_USER_CHARS} characters.", param="user"
            )
        options["user"] = user
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, bool):
            raise RequestError("logprobs must be true or false.", param="logprobs")
        if logprobs and shape == "completion":
            raise RequestError(
                "logprobs need a messages request (a prompt caller gets completion chunks).",
                param="logprobs",
            )
        options["logprobs"] = logprobs
    safety = body.get("safety_identifier")
    if safety is not None:
        if not isinstance(safety, str) or not 1 <= len(safety) <= MAX_USER_CHARS:
            raise RequestError(
                f"safety_identifier must be a string of 1 to {MAX_USER_CHARS} characters.",
                param="safety_identifier",
            )
        options["safety_identifier"] = safety
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None:
        if not options.get("logprobs"):
            raise RequestError("top_logprobs needs logprobs: true.", param="top_logprobs")
        options["top_logprobs"] = top
    return options


_STREAM_OPTIONS = ("include_usage", "include_obfuscation")


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool | None]:
    """``stream_options``: whether the caller gets the usage chunk, and its
    ``include_obfuscation`` (None when not sent), which goes upstream as it is."""
    stream_options = body.get("stream_options")
    if stream_options is None:
        return False, None
    if not isinstance(stream_options, dict):
        raise RequestError("stream_options must be an object.", param="stream_options")
    for key, value in stream_options.items():
        if key not in _STREAM_OPTIONS:
            raise RequestError(
                f"stream_options.{key} is not supported.", param=f"stream_options.{key}"
            )
        if not isinstance(value, bool):
            raise RequestError(
                f"stream_options.{key} must be true or false.", param=f"stream_options.{key}"
            )
    return stream_options.get("include_usage") is True, stream_options.get("include_obfuscation")


def _stream(body: dict[str, Any], stream_default: bool) -> bool:
    value = body.get("stream")
    if value is None:
        return stream_default
    if not isinstance(value, bool):
        raise RequestError("stream must be true or false.", param="stream")
    return value


def parse_request(
    body: dict[str, Any], limits: RequestLimits, *, stream_default: bool = True
) -> GenerateRequest:
    """Validate a parsed body against the deployment's limits.

    ``stream_default`` is what a body without ``stream`` means: True at ``/api/generate``
    (the browser helpers and the AI SDK hooks never send it), False at the OpenAI-compatible
    ``/api/v1`` paths, where the OpenAI API's own rule holds.
    """
    prompt = body.get("prompt")
    messages = body.get("messages")
    if prompt is not None and messages is not None:
        raise RequestError("Send either prompt or messages, not both.", param="prompt")
    if prompt is None and messages is None:
        raise RequestError(
            'The body needs a prompt ({"prompt": "..."}) or a messages list.', param="prompt"
        )
    shape: Shape = "completion" if prompt is not None else "chat"
    ui = isinstance(messages, list) and any(
        isinstance(m, dict) and "parts" in m and "content" not in m for m in messages
    )
    _check_fields(body, limits, ui)
    stream = _stream(body, stream_default)

    model = body.get("model")
    if model is None:  # absent or null: the deployment's default
        model = limits.default_model
    if not isinstance(model, str) or model not in limits.models:
        allowed = ", ".join(sorted(limits.models))
        raise RequestError(f"model must be one of: {allowed}.", param="model")
    max_tokens = _max_tokens(body, limits)
    options = _options(body, shape)
    include_usage, obfuscation = _stream_options(body)

    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("prompt must be a non-empty string.", param="prompt")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(
                f"prompt holds {len(prompt)} characters; the limit is {limits.max_prompt_chars}.",
                param="prompt",
            )
        return GenerateRequest(
            shape="completion",
            model=model,
            max_tokens=max_tokens,
            prompt=prompt,
            options=options,
            include_usage=include_usage,
            obfuscation=obfuscation,
            stream=stream,
        )
    collected = collect_messages(
        messages,
        max_messages=limits.max_messages,
        policy=ImagePolicy(limits.image_url_schemes),
    )
    if collected.text_chars > limits.max_prompt_chars:
        raise RequestError(
            f"messages hold {collected.text_chars} characters; the limit is "
            f"{limits.max_prompt_chars}.",
            param="messages",
        )
    return GenerateRequest(
        shape="chat",
        model=model,
        max_tokens=max_tokens,
        messages=tuple(collected.messages),
        options=options,
        include_usage=include_usage,
        obfuscation=obfuscation,
        ui_messages=collected.ui,
        stream=stream,
        message_chars=collected.text_chars,
        message_bytes=collected.text_bytes,
        images=collected.images,
        low_detail_images=collected.low_detail_images,
    )


def parse_body(
    raw: bytes, limits: RequestLimits, *, stream_default: bool = True
) -> GenerateRequest:
    """The body, parsed and validated, under :func:`parse_sized`'s size rule."""
    return parse_sized(
        raw,
        limits,
        lambda body: parse_request(body, limits, stream_default=stream_default),
        lambda request: bool(request.images),
    )


def parse_sized[R](
    raw: bytes,
    limits: RequestLimits,
    build: Callable[[dict[str, Any]], R],
    has_images: Callable[[R], bool],
) -> R:
    """``build`` applied to the parsed body, under the size rule of every endpoint: a body
    over ``MAX_BODY_BYTES`` that carries no image is a 413 whatever else is wrong with it."""
    too_large = len(raw) > limits.max_body_bytes
    try:
        result = build(parse_json_object(raw))
    except RequestError:
        if too_large:
            raise _too_large(limits) from None
        raise
    if too_large and not has_images(result):
        raise _too_large(limits)
    return result


def _too_large(limits: RequestLimits) -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body is larger than the limit of {limits.max_body_bytes} bytes "
        f"(a body with images may have up to {limits.max_image_body_bytes})."
    )


def safety_identifier(client_id: str, secret: str | None) -> str:
    """OpenAI's ``safety_identifier`` for an authenticated client: an HMAC-SHA256 of its id
    (keyed with ``AUTH_SIGNING_SECRET`` when set), so a provider's abuse report names a user the
    operator can find (by computing the same value) and the provider learns no user id."""
    key = (secret or "").encode("utf-8")
    digest = hmac.new(key, client_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "sf-" + digest[:32]


def build_upstream_request(
    request: GenerateRequest, upstream: UpstreamSettings, *, safety_id: str | None = None
) -> UpstreamRequest:
    """The one request we forward: our URL, our fields, always ``stream: true`` (a caller
    without ``stream`` gets the stream aggregated into one object by the relay). With
    protection on, ``safety_id`` is the authenticated client's :func:`safety_identifier`."""
    payload: dict[str, Any] = {"model": request.model}
    use_completions = request.prompt is not None and upstream.prompt_endpoint == "completions"
    if use_completions:
        payload["prompt"] = request.prompt
    elif request.prompt is not None:
        payload["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        payload["messages"] = list(request.messages)
    # The legacy completions endpoint knows only max_tokens; chat takes the deployment's field.
    payload["max_tokens" if use_completions else upstream.max_tokens_field] = request.max_tokens
    payload.update(request.options)
    if safety_id is not None:
        if "safety_identifier" in request.options:
            raise RequestError(
                "safety_identifier is set by this deployment for authenticated clients.",
                param="safety_identifier",
            )
        payload["safety_identifier"] = safety_id
    payload["stream"] = True
    stream_options: dict[str, bool] = {}
    if upstream.include_usage:
        stream_options["include_usage"] = True
    if request.obfuscation is not None:
        stream_options["include_obfuscation"] = request.obfuscation
    if stream_options:
        payload["stream_options"] = stream_options
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if use_completions:
        return UpstreamRequest(upstream.url("completions"), body, "completions")
    return UpstreamRequest(upstream.url("chat"), body, "chat")
