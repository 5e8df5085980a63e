"""The retry policy as pure functions, and the retry/fallback loop with an injected clock, sleep
and random source (no test here sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from lib.config import SettingsError, load_settings
from lib.errors import (
    APIError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamTimeout,
)
from lib.retry import (
    RetryPolicy,
    Target,
    backoff,
    next_delay,
    open_with_retries,
    retry_after,
    should_retry,
)

WALL = 1_800_000_000.0


def answered(status: int, headers: Mapping[str, str] | None = None) -> UpstreamError:
    kind = {429: UpstreamRateLimited, 401: UpstreamAuthError, 403: UpstreamAuthError}
    error = kind.get(status, UpstreamError)(f"status {status}")
    error.upstream_status = status
    error.retry_headers = dict(headers or {})
    return error


def unreachable() -> UpstreamError:
    error = UpstreamError("refused")
    error.connect_failure = True
    return error


def timed_out() -> UpstreamError:
    error = UpstreamTimeout("no answer within the first-byte limit")
    error.connect_failure = True
    return error


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(status: int) -> None:
    assert should_retry(answered(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 302])
def test_permanent_statuses_are_not(status: int) -> None:
    assert not should_retry(answered(status))


def test_failures_without_an_answer_are_retried_and_protocol_errors_are_not() -> None:
    assert should_retry(unreachable())
    assert not should_retry(timed_out())  # it had its whole limit: the next upstream is asked
    assert not should_retry(UpstreamProtocolError("a 200 that is not an event stream"))
    assert not should_retry(UpstreamRejectedRequest("bad"))


def test_x_should_retry_header_wins_both_ways() -> None:
    assert not should_retry(answered(429, {"x-should-retry": "false"}))  # quota spent
    assert should_retry(answered(400, {"x-should-retry": "true"}))


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": format_datetime(datetime.fromtimestamp(WALL + 7, UTC), usegmt=True)}, 7.0),
        ({"retry-after": format_datetime(datetime.fromtimestamp(WALL - 7, UTC), usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after-ms": "x"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], wait: float | None) -> None:
    assert retry_after(headers, WALL) == wait


def test_backoff_doubles_is_capped_and_jitters_down_at_most_a_quarter() -> None:
    policy = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=8.0)
    assert [backoff(policy, n, lambda: 0.0) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff(policy, 2, lambda: 1.0) == 1.5
    assert backoff(policy, 2, lambda: 0.5) == 1.75


def test_next_delay_honours_the_upstream_and_gives_up_on_long_waits() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=8.0)
    zero = lambda: 0.0  # noqa: E731
    assert next_delay(policy, answered(429, {"retry-after": "2"}), 0, wall=WALL, rng=zero) == 2
    assert next_delay(policy, answered(429, {"retry-after": "60"}), 0, wall=WALL, rng=zero) is None
    assert next_delay(policy, answered(503), 1, wall=WALL, rng=zero) == 1.0
    assert next_delay(policy, answered(503), 2, wall=WALL, rng=zero) is None  # attempts spent
    assert next_delay(policy, answered(401), 0, wall=WALL, rng=zero) is None
    assert next_delay(policy, APIError("ours"), 0, wall=WALL, rng=zero) is None


class Script:
    """Targets' answers in order, a fake clock that the injected sleep advances."""

    def __init__(self, *outcomes: APIError | str) -> None:
        self.outcomes = list(outcomes)
        self.now = 100.0
        self.calls: list[tuple[str, float]] = []
        self.sleeps: list[float] = []

    async def attempt(self, target: Target) -> str:
        self.calls.append((target.name, self.now))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, APIError):
            raise outcome
        return outcome

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def run(
        self, targets: tuple[Target, ...], cut_at: float | None = None, retries: int = 2
    ) -> tuple[str, Target]:
        return await open_with_retries(
            targets,
            self.attempt,
            RetryPolicy(max_retries=retries, base_delay=0.5, max_delay=8.0),
            cut_at=cut_at,
            clock=lambda: self.now,
            sleep=self.sleep,
            rng=lambda: 0.0,
            wall=lambda: WALL,
        )


PRIMARY = (Target("primary", "http://a/v1", "k"),)
BOTH = (*PRIMARY, Target("fallback1", "http://b/v1", "k2", "m2"))


async def test_retries_then_succeeds_with_backoff() -> None:
    script = Script(answered(503), unreachable(), "stream")
    assert await script.run(PRIMARY) == ("stream", PRIMARY[0])
    assert script.sleeps == [0.5, 1.0]


async def test_attempts_are_bounded() -> None:
    script = Script(answered(500), answered(502), answered(503), "never reached")
    with pytest.raises(UpstreamError, match="503"):
        await script.run(PRIMARY)
    assert len(script.calls) == 3


async def test_never_retries_a_rejected_request_nor_falls_back() -> None:
    script = Script(UpstreamRejectedRequest("bad prompt"), "never")
    with pytest.raises(UpstreamRejectedRequest):
        await script.run(BOTH)
    assert len(script.calls) == 1


async def test_no_wait_runs_past_the_cut() -> None:
    script = Script(answered(503), answered(503), "never")
    with pytest.raises(UpstreamError):
        await script.run(PRIMARY, cut_at=100.0 + 0.5 + 0.9)  # second wait (1.0) would cross it
    assert script.sleeps == [0.5]


async def test_long_retry_after_falls_back_at_once() -> None:
    script = Script(answered(429, {"retry-after": "30"}), "from fallback")
    assert await script.run(BOTH) == ("from fallback", BOTH[1])
    assert script.sleeps == []
    assert [name for name, _ in script.calls] == ["primary", "fallback1"]


async def test_timeout_falls_back_without_retrying() -> None:
    script = Script(timed_out(), "from fallback")
    assert (await script.run(BOTH))[1].name == "fallback1"
    assert script.sleeps == []


async def test_auth_failure_falls_back_without_retrying() -> None:
    script = Script(answered(401), "from fallback")
    assert (await script.run(BOTH))[1].name == "fallback1"
    assert len(script.calls) == 2


async def test_every_target_failing_raises_the_last_failure() -> None:
    script = Script(answered(503), timed_out())
    with pytest.raises(UpstreamTimeout):
        await script.run(BOTH, retries=0)


async def test_cancellation_during_the_wait_stops_all_retries() -> None:
    started = asyncio.Event()
    calls: list[str] = []

    async def attempt(target: Target) -> str:
        calls.append(target.name)
        raise answered(503)

    async def sleep(seconds: float) -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(
        open_with_retries(BOTH, attempt, RetryPolicy(), cut_at=None, clock=lambda: 0.0, sleep=sleep)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == ["primary"]


# --- settings -----------------------------------------------------------------------------------


def test_fallbacks_read_keys_from_named_variables() -> None:
    env = {
        "AZURE_KEY": "sk-azure",
        "UPSTREAM_FALLBACKS": '[{"base_url": "https://b.example/v1", "api_key_env": "AZURE_KEY",'
        ' "model": "gpt-4o"}, {"base_url": "http://c/v1"}]',
        "OPENAI_API_KEY": "sk-main",
    }
    settings = load_settings(env)
    assert settings.upstream.fallbacks == (
        Target("fallback1", "https://b.example/v1", "sk-azure", "gpt-4o"),
        Target("fallback2", "http://c/v1", "sk-main", None),
    )
    assert settings.upstream.retry_policy == RetryPolicy(2, 0.5, 8.0)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('[{"base_url": "https://b/v1", "api_key": "sk-x"}]', "inline api_key"),
        ('[{"base_url": "https://b/v1", "api_key_env": "NOPE"}]', "NOPE"),
        ('[{"base_url": "ftp://b"}]', "base_url"),
        ('{"base_url": "https://b/v1"}', "list"),
        ("[1]", "object"),
        ("[{", "JSON"),
        ('[{"base_url": "https://b/v1", "url": 1}]', "unknown"),
    ],
)
def test_bad_fallbacks_name_the_problem(value: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=needle) as caught:
        load_settings({"UPSTREAM_FALLBACKS": value, "OPENAI_API_KEY": "sk-main"})
    assert "sk-x" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSTREAM_MAX_RETRIES", "11"),
        ("UPSTREAM_RETRY_BASE_DELAY", "-1"),
        ("REPETITION_MAX_PERIOD", "1500"),
        ("MAX_STREAM_SECONDS", "forever"),
    ],
)
def test_bad_resilience_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_zero_disables_the_stream_limit_and_the_detector() -> None:
    settings = load_settings({"MAX_STREAM_SECONDS": "0", "REPETITION_WINDOW": "0"})
    assert settings.stream.max_stream_seconds is None
    assert settings.stream.repetition_window == 0
