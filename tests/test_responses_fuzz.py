"""Fuzzing ``/api/v1/responses`` with hypothesis, as tests/test_fuzz.py does ``/api/generate``:
arbitrary Responses bodies (items, parts, tools, the stateful fields) never get a 5xx or a
traceback, every error is the one JSON envelope, and every stream ends with
``response.completed`` / ``response.incomplete`` or a failure, never cut silently."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, ErrorTap
from tests.test_fuzz import call, json_value
from tests.test_fuzz import fuzz_handler as fuzz_handler  # the fixture, shared

EXAMPLES = 600
QUERY = b"api=v1&route=responses"

part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    optional={
        "text": st.text(max_size=10) | json_value,
        "image_url": st.sampled_from(["https://x.example/a.png", "data:image/png;base64,AA=="])
        | json_value,
        "detail": st.sampled_from(["low", "auto", "huge"]) | json_value,
        "file_id": json_value,
        "refusal": json_value,
        "annotations": json_value,
    },
)
item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
        )
        | json_value,
        "role": st.sampled_from(["user", "system", "developer", "assistant", "tool"]) | json_value,
        "content": st.text(max_size=20) | st.lists(part, max_size=3) | json_value,
        "call_id": st.text(max_size=5) | json_value,
        "name": st.sampled_from(["get_weather", "bad name"]) | json_value,
        "arguments": st.text(max_size=10) | json_value,
        "output": st.text(max_size=10) | st.lists(part, max_size=2) | json_value,
        "id": st.text(max_size=5) | json_value,
        "summary": json_value,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search"]) | json_value},
    optional={
        "name": st.sampled_from(["get_weather", "x y"]) | json_value,
        "parameters": json_value,
        "strict": json_value,
    },
)
request = st.fixed_dictionaries(
    {},
    optional={
        "input": st.text(max_size=30) | st.lists(item, max_size=4) | json_value,
        "model": st.sampled_from(["gpt-4o-mini", "nope"]) | json_value,
        "instructions": st.text(max_size=10) | json_value,
        "stream": st.booleans() | json_value,
        "max_output_tokens": st.integers(-5, 10**7) | json_value,
        "temperature": st.floats(-1, 3) | json_value,
        "tools": st.lists(tool, max_size=2) | json_value,
        "tool_choice": st.sampled_from(["auto", "none", "required"])
        | st.fixed_dictionaries({"type": st.just("function"), "name": json_value})
        | json_value,
        "reasoning": st.fixed_dictionaries(
            {}, optional={"effort": json_value, "summary": json_value}
        )
        | json_value,
        "text": st.fixed_dictionaries({}, optional={"format": json_value, "verbosity": json_value})
        | json_value,
        "store": json_value,
        "include": json_value,
        "previous_response_id": json_value,
        "metadata": json_value,
        "stream_options": json_value,
    },
)

# Bodies that mostly validate, so the mix reaches the upstream and the stream too.
plausible = st.fixed_dictionaries(
    {
        "input": st.text(min_size=1, max_size=30)
        | st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "developer"])},
                optional={"content": st.text(max_size=20)},
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "stream": st.booleans(),
        "instructions": st.text(max_size=10),
        "max_output_tokens": st.integers(1, 50),
        "temperature": st.floats(0, 2),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"])}),
        "tools": st.just([{"type": "function", "name": "get_weather"}]),
        "text": st.just({"format": {"type": "json_object"}}),
        "store": st.just(False),
    },
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=(plausible | request).map(lambda obj: json.dumps(obj).encode()))
async def test_no_responses_request_gets_a_5xx_or_a_cut_stream(
    fuzz_handler: GenerateHandler, error_tap: ErrorTap, body: bytes
) -> None:
    headers = [(b"content-type", b"application/json")]
    status, response_headers, raw = await call(fuzz_handler, "POST", headers, QUERY, body, [])
    event(f"status {status}")
    assert status < 500, (status, raw[:300])
    assert CANARY_KEY.encode() not in raw
    assert not error_tap.tracebacks, error_tap.tracebacks
    if status >= 400:
        envelope = json.loads(raw)
        assert set(envelope["error"]) == {"type", "message", "param"}
        assert envelope["error"]["param"] is None or "messages" not in envelope["error"]["param"]
    elif response_headers[b"content-type"].startswith(b"text/event-stream"):
        last = raw[:-2].rsplit(b"\n\n", 1)[-1]
        assert last.split(b"\n", 1)[0] in (
            b"event: response.completed",
            b"event: response.incomplete",
            b"event: response.failed",
        ), last[:200]
    else:
        assert json.loads(raw)["object"] == "response"
