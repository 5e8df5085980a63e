"""Settings: read once from a mapping, frozen, and every bad value named with its variable."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from lib.config import Settings, SettingsError, load_settings, vercel_max_duration
from lib.handler import Misconfigured


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.upstream.api_key is None
    assert settings.upstream.url("chat") == "https://api.openai.com/v1/chat/completions"
    assert settings.upstream.url("completions") == "https://api.openai.com/v1/completions"
    assert settings.request.max_body_bytes == 64 * 1024
    assert settings.request.models == {"gpt-4o-mini"}
    assert settings.upstream.prompt_endpoint == "chat"
    assert settings.upstream.include_usage is True


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        load_settings({}).request.max_tokens = 5  # type: ignore[misc]


def test_values_from_the_environment() -> None:
    settings = load_settings(
        {
            "OPENAI_API_KEY": " sk-x ",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
            "DEFAULT_MODEL": "b",
            "ALLOWED_MODELS": "a, b ,",
            "MAX_TOKENS": "50",
            "PROMPT_ENDPOINT": "completions",
            "UPSTREAM_INCLUDE_USAGE": "off",
            "UPSTREAM_IDLE_TIMEOUT": "2.5",
        }
    )
    assert settings.upstream.api_key == "sk-x"
    assert settings.upstream.url("chat") == "http://127.0.0.1:9/v1/chat/completions"
    assert settings.request.models == {"a", "b"}
    assert settings.request.max_tokens == 50
    assert settings.upstream.prompt_endpoint == "completions"
    assert settings.upstream.include_usage is False
    assert settings.upstream.idle_timeout == 2.5


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MAX_TOKENS": "lots"}, "MAX_TOKENS='lots'"),
        ({"MAX_TOKENS": "0"}, "MAX_TOKENS='0'"),
        ({"UPSTREAM_IDLE_TIMEOUT": "nan"}, "UPSTREAM_IDLE_TIMEOUT='nan'"),
        ({"UPSTREAM_INCLUDE_USAGE": "maybe"}, "UPSTREAM_INCLUDE_USAGE='maybe'"),
        ({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL='ftp://x'"),
        ({"PROMPT_ENDPOINT": "legacy"}, "PROMPT_ENDPOINT='legacy'"),
        ({"DEFAULT_MODEL": "x", "ALLOWED_MODELS": "y"}, "DEFAULT_MODEL='x'"),
    ],
)
def test_bad_values_name_the_variable_and_value(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle.replace("(", r"\(")):
        load_settings(env)


def test_max_duration_from_vercel_json_then_the_setting(tmp_path: Path) -> None:
    assert load_settings({}, root=tmp_path).stream.max_duration is None
    assert load_settings({"MAX_DURATION": "30"}, root=tmp_path).stream.max_duration == 30.0
    (tmp_path / "vercel.json").write_text(
        json.dumps({"functions": {"api/generate.py": {"maxDuration": 300}}})
    )
    assert vercel_max_duration(tmp_path) == 300.0
    assert load_settings({"MAX_DURATION": "30"}, root=tmp_path).stream.max_duration == 300.0


def test_the_project_vercel_json_gives_60_seconds() -> None:
    assert vercel_max_duration() == 60.0
    assert Settings().stream.max_duration is None


def test_module_imports_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The original Edge Function threw at import; ours must start and answer 500 instead."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MAX_TOKENS", "not-a-number")
    sys.modules.pop("api.generate", None)
    module = importlib.import_module("api.generate")
    assert callable(module.app)
    assert isinstance(module.handler, Misconfigured)  # no settings: every request is the 500
    assert "MAX_TOKENS='not-a-number'" in module.handler.error.message
    sys.modules.pop("api.generate", None)


def test_a_printed_settings_object_holds_no_secret() -> None:
    """What a developer prints while debugging can end up in a log: the keys, tokens and
    secrets show as set, never as their values, down to the fallbacks' keys."""
    secrets = {
        "OPENAI_API_KEY": "sk-primary-0123456789abcdef",
        "FALLBACK_KEY": "sk-fallback-0123456789abcdef",
        "AUTH_TOKENS": "token-0123456789abcdef",
        "AUTH_SIGNING_SECRET": "signing-" + "s" * 32,
        "AUTH_JWT_SECRET": "jwt-" + "j" * 32,
    }
    fallbacks = [{"base_url": "https://fallback.example/v1", "api_key_env": "FALLBACK_KEY"}]
    settings = load_settings({**secrets, "UPSTREAM_FALLBACKS": json.dumps(fallbacks)})
    shown = repr(settings)
    for name, value in secrets.items():
        assert value not in shown, name
    assert "api_key=[redacted]" in shown
    assert "base_url='https://fallback.example/v1'" in shown  # the rest is still shown
    assert repr(load_settings({}).upstream).count("api_key=None") == 1  # unset: shown as such
