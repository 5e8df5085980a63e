"""Chat messages: the caller's ``messages`` checked and rebuilt as the list sent upstream.

Two dialects arrive here. OpenAI chat messages (``{"role", "content", ...}``, what the openai
SDKs and ``@ai-sdk/openai-compatible`` send) are checked field by field and forwarded as they
came, so a tool loop's second turn (an assistant message with ``tool_calls`` and ``content:
null``, then one ``role: "tool"`` message per call) reaches the model intact. AI SDK ``useChat``
messages (``{"id", "role", "parts"}``) are converted to that same shape, part by part.

Nothing is dropped without a rule written in docs/chat-completions.md: a field or part this
module does not know is a 400 that names it. The deliberate exceptions, all display artefacts
of earlier answers rather than input: ``reasoning`` parts and an assistant message's
``reasoning_content``/``reasoning`` (a model's thoughts are not sent back to it, and several
providers refuse them as input), ``step-start``, ``source-url``, ``source-document`` and
``data-*`` parts, and a useChat message's ``id`` and ``metadata``.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from lib.errors import RequestError

Message = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool")
UI_ROLES = ("system", "user", "assistant")
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# useChat parts that only record how an earlier answer was shown, never input for the model.
UI_IGNORED_PARTS = frozenset({"reasoning", "step-start", "source-url", "source-document"})
UI_TOOL_STATES_WITH_RESULT = frozenset({"output-available", "output-error", "output-denied"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
ASSISTANT_REASONING = ("reasoning_content", "reasoning")  # accepted in history, never forwarded


class Collected:
    """What the messages hold, for the limits and the token estimate (a plain class: see
    ``lib/log.RequestLog``)."""

    __slots__ = ("images", "low_detail_images", "messages", "text_bytes", "text_chars", "ui")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.text_chars = 0
        self.text_bytes = 0  # UTF-8: the token estimate's bound (lib/limits.py)
        self.images = 0
        self.low_detail_images = 0
        self.ui = False

    def count(self, *texts: str) -> None:
        """Add text the model will read to both tallies."""
        for text in texts:
            self.text_chars += len(text)
            self.text_bytes += len(text.encode("utf-8", "surrogatepass"))


class ImagePolicy(NamedTuple):
    """Which image URLs may be forwarded: ``schemes`` empty turns images off."""

    schemes: frozenset[str]


def _refuse(message: str, param: str) -> RequestError:
    return RequestError(message, param=param)


def _string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        kind = "a string" if empty else "a non-empty string"
        raise _refuse(f"{param} must be {kind}.", param)
    return value


def _unknown(item: dict[str, Any], allowed: frozenset[str] | set[str], param: str) -> None:
    for key in item:
        if key not in allowed:
            raise _refuse(
                f"{param}.{key} is not supported here (see docs/chat-completions.md).",
                f"{param}.{key}",
            )


def _image_url(url: Any, param: str, policy: ImagePolicy) -> str:
    """An image URL the deployment forwards: its scheme must be on the allowlist."""
    text = _string(url, param, empty=False)
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if not policy.schemes:
        raise _refuse("Images are turned off on this deployment.", param)
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes))
        raise _refuse(f"{param} must be a URL with one of the schemes {allowed}.", param)
    if scheme == "data" and not re.match(r"data:image/[A-Za-z0-9.+-]+;base64,", text):
        raise _refuse(f"{param} must be a base64 data URL of an image (data:image/...).", param)
    return text


class _Builder:
    """Rebuilds one request's messages, counting text and images as it goes."""

    def __init__(self, policy: ImagePolicy) -> None:
        self.policy = policy
        self.out = Collected()

    # -- OpenAI chat messages ------------------------------------------------------------------

    def text_parts(self, value: list[Any], param: str, *, images: bool) -> str | list[Any]:
        """A content list: text-only lists are joined into one string (what every server
        accepts); a list with images is forwarded as parts."""
        parts: list[dict[str, Any]] = []
        for index, part in enumerate(value):
            where = f"{param}[{index}]"
            if not isinstance(part, dict):
                raise _refuse(f"{where} must be an object.", where)
            kind = part.get("type")
            if kind == "text":
                _unknown(part, {"type", "text"}, where)
                text = _string(part.get("text"), f"{where}.text")
                self.out.count(text)
                parts.append({"type": "text", "text": text})
            elif kind == "image_url" and images:
                _unknown(part, {"type", "image_url"}, where)
                image = part.get("image_url")
                if not isinstance(image, dict):
                    raise _refuse(f"{where}.image_url must be an object.", f"{where}.image_url")
                _unknown(image, {"url", "detail"}, f"{where}.image_url")
                url = _image_url(image.get("url"), f"{where}.image_url.url", self.policy)
                forwarded: dict[str, Any] = {"url": url}
                detail = image.get("detail")
                if detail is not None:
                    if not isinstance(detail, str) or detail not in IMAGE_DETAILS:
                        raise _refuse(
                            f"{where}.image_url.detail must be auto, low or high.",
                            f"{where}.image_url.detail",
                        )
                    forwarded["detail"] = detail
                self._count_image(detail)
                parts.append({"type": "image_url", "image_url": forwarded})
            else:
                allowed = "text and image_url parts" if images else "text parts"
                raise _refuse(f"{where}: this message may only hold {allowed}.", f"{where}.type")
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts

    def _count_image(self, detail: Any) -> None:
        self.out.images += 1
        if detail == "low":
            self.out.low_detail_images += 1

    def content(self, value: Any, param: str, *, images: bool = False) -> str | list[Any]:
        if isinstance(value, str):
            self.out.count(value)
            return value
        if isinstance(value, list):
            return self.text_parts(value, param, images=images)
        raise _refuse(f"{param} must be a string or a list of parts.", param)

    def tool_calls(self, value: Any, param: str) -> list[Message]:
        if not isinstance(value, list) or not value:
            raise _refuse(f"{param} must be a non-empty list.", param)
        calls = []
        for index, call in enumerate(value):
            where = f"{param}[{index}]"
            if not isinstance(call, dict):
                raise _refuse(f"{where} must be an object.", where)
            _unknown(call, {"id", "type", "function"}, where)
            if call.get("type", "function") != "function":
                raise _refuse(f"{where}.type must be function.", f"{where}.type")
            function = call.get("function")
            if not isinstance(function, dict):
                raise _refuse(f"{where}.function must be an object.", f"{where}.function")
            _unknown(function, {"name", "arguments"}, f"{where}.function")
            name = _string(function.get("name"), f"{where}.function.name", empty=False)
            arguments = _string(function.get("arguments"), f"{where}.function.arguments")
            self.out.count(name, arguments)
            calls.append(
                {
                    "id": _string(call.get("id"), f"{where}.id", empty=False),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        return calls

    def openai(self, item: dict[str, Any], role: str, param: str) -> None:
        message: Message = {"role": role}
        if role in ("system", "developer", "user"):
            _unknown(item, {"role", "content", "name"}, param)
            message["content"] = self.content(
                item.get("content"), f"{param}.content", images=role == "user"
            )
        elif role == "assistant":
            _unknown(
                item,
                {"role", "content", "name", "tool_calls", "refusal", *ASSISTANT_REASONING},
                param,
            )
            calls = item.get("tool_calls")
            content = item.get("content")
            if content is None and calls is None and not item.get("refusal"):
                raise _refuse(
                    f"{param}.content may be null only when the message has tool_calls.",
                    f"{param}.content",
                )
            message["content"] = (
                None if content is None else self.content(content, f"{param}.content")
            )
            if calls is not None:
                message["tool_calls"] = self.tool_calls(calls, f"{param}.tool_calls")
            refusal = item.get("refusal")
            if refusal is not None:
                message["refusal"] = _string(refusal, f"{param}.refusal")
        else:  # tool
            _unknown(item, {"role", "content", "tool_call_id"}, param)
            message["tool_call_id"] = _string(
                item.get("tool_call_id"), f"{param}.tool_call_id", empty=False
            )
            message["content"] = self.content(item.get("content"), f"{param}.content")
        name = item.get("name")
        if name is not None:
            message["name"] = _string(name, f"{param}.name", empty=False)
        self.out.messages.append(message)

    # -- AI SDK useChat messages ---------------------------------------------------------------

    def ui(self, item: dict[str, Any], role: str, param: str) -> None:
        """One useChat message: text parts joined, image files as ``image_url`` parts, tool
        parts as an assistant ``tool_calls`` message followed by one ``tool`` message each."""
        self.out.ui = True
        _unknown(item, {"id", "role", "parts", "metadata"}, param)
        if role not in UI_ROLES:
            raise _refuse(f"{param}.role must be one of system, user, assistant.", f"{param}.role")
        parts = item.get("parts")
        if not isinstance(parts, list):
            raise _refuse(f"{param}.parts must be a list.", f"{param}.parts")
        content: list[dict[str, Any]] = []  # text and image parts, in the caller's order
        calls: list[Message] = []
        results: list[Message] = []

        def flush() -> None:
            text = "".join(p["text"] for p in content if p["type"] == "text")
            if calls:
                self.out.messages.append(
                    {"role": "assistant", "content": text or None, "tool_calls": list(calls)}
                )
                self.out.messages.extend(results)
            elif any(p["type"] == "image_url" for p in content):
                self.out.messages.append({"role": role, "content": _merged(content)})
            elif text:
                self.out.messages.append({"role": role, "content": text})
            content.clear()
            calls.clear()
            results.clear()

        sent_before = len(self.out.messages)
        for index, part in enumerate(parts):
            where = f"{param}.parts[{index}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _refuse(f"{where} must be an object with a type.", where)
            kind: str = part["type"]
            if kind == "text":
                if calls:
                    flush()  # text after a tool call belongs to the next step
                text = _string(part.get("text"), f"{where}.text")
                self.out.count(text)
                content.append({"type": "text", "text": text})
            elif kind in UI_IGNORED_PARTS or kind.startswith("data-"):
                continue
            elif kind == "file":
                content.append(self._ui_file(part, role, where))
            elif role == "assistant" and (kind.startswith("tool-") or kind == "dynamic-tool"):
                call, result = self._ui_tool(part, kind, where)
                calls.append(call)
                results.append(result)
            else:
                raise _refuse(f"{where}: a {kind!r} part cannot be sent to the model.", where)
        flush()
        if len(self.out.messages) == sent_before and role != "assistant":
            # An assistant turn of only reasoning or markers has nothing to send; a user or
            # system message that says nothing the model can read is the caller's mistake.
            raise _refuse(f"{param} holds nothing the model can read.", f"{param}.parts")

    def _ui_file(self, part: dict[str, Any], role: str, where: str) -> dict[str, Any]:
        _unknown(part, {"type", "mediaType", "url", "filename", "providerMetadata"}, where)
        media = _string(part.get("mediaType"), f"{where}.mediaType", empty=False)
        if role != "user" or not media.lower().startswith("image/"):
            raise _refuse(
                f"{where}: only image files in user messages can be sent to the model "
                f"(got {media!r}).",
                f"{where}.mediaType",
            )
        url = _image_url(part.get("url"), f"{where}.url", self.policy)
        self._count_image(None)
        return {"type": "image_url", "image_url": {"url": url}}

    def _ui_tool(self, part: dict[str, Any], kind: str, where: str) -> tuple[Message, Message]:
        """A tool part with its result: the call, and the ``tool`` message that answers it."""
        name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
        name = _string(name, f"{where}.toolName", empty=False)
        call_id = _string(part.get("toolCallId"), f"{where}.toolCallId", empty=False)
        state = part.get("state")
        if not isinstance(state, str) or state not in UI_TOOL_STATES_WITH_RESULT:
            raise _refuse(
                f"{where}: the tool call {call_id} has no result yet (state {state!r}); add its "
                "output before sending the conversation again.",
                f"{where}.state",
            )
        arguments = json.dumps(part.get("input"), ensure_ascii=False, separators=(",", ":"))
        if state == "output-available":
            output = part.get("output")
            result = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        elif state == "output-error":
            result = _string(part.get("errorText"), f"{where}.errorText")
        else:
            approval = part.get("approval")
            reason = approval.get("reason") if isinstance(approval, dict) else None
            result = reason if isinstance(reason, str) and reason else "The tool call was denied."
        self.out.count(name, arguments, result)
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return call, {"role": "tool", "tool_call_id": call_id, "content": result}


def _merged(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content parts with each run of adjacent text parts joined into one."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = {"type": "text", "text": out[-1]["text"] + part["text"]}
        elif part["type"] != "text" or part["text"]:
            out.append(part)
    return out


def collect_messages(value: Any, *, max_messages: int, policy: ImagePolicy) -> Collected:
    """Check ``messages`` and rebuild them as sent upstream (see the module docstring)."""
    if not isinstance(value, list) or not value:
        raise _refuse("messages must be a non-empty list.", "messages")
    if len(value) > max_messages:
        raise _refuse(f"messages may hold at most {max_messages} items.", "messages")
    builder = _Builder(policy)
    for index, item in enumerate(value):
        param = f"messages[{index}]"
        if not isinstance(item, dict):
            raise _refuse(f"{param} must be an object.", param)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or dict is unhashable
            raise _refuse(f"{param}.role must be one of {', '.join(ROLES)}.", f"{param}.role")
        if "parts" in item and "content" not in item:
            builder.ui(item, role, param)
        else:
            builder.openai(item, role, param)
    if not builder.out.messages:
        raise _refuse("messages hold nothing the model can read.", "messages")
    return builder.out
