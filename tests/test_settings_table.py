"""The settings table (lib/config.SPECS) is the one place a setting's name, group, bounds and
default are written: the loader reads it, the groups take their defaults from it, and
the docs' reference tables must agree with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lib.config import (
    SPECS,
    CORSSettings,
    JWTSettings,
    OutputSettings,
    Protection,
    RequestLimits,
    Settings,
    SettingsError,
    Spec,
    StreamLimits,
    UpstreamSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", re.M)
GROUPS: dict[str, type[Any]] = {
    "upstream": UpstreamSettings,
    "request": RequestLimits,
    "stream": StreamLimits,
    "protection": Protection,
    "jwt": JWTSettings,
    "cors": CORSSettings,
    "output": OutputSettings,
}
# Fields that are not a variable of their own: the JWT group shares protection's lifetime, and
# protection holds the JWT group.
DERIVED = {("jwt", "max_lifetime"), ("protection", "jwt")}


def documented() -> dict[str, list[str]]:
    """Each variable's default cell in every reference table that lists it."""
    rows: dict[str, list[str]] = {}
    for path in DOCS:
        for name, cell in ROW.findall(path.read_text(encoding="utf-8")):
            rows.setdefault(name, []).append(cell.strip().strip("`"))
    return rows


def shown(spec: Spec) -> set[str]:
    """How the docs may write the default."""
    if spec.shown:
        return {spec.shown}
    if spec.kind is bool:
        return {"true" if spec.default else "false"}
    if spec.default is None or spec.default in ((), frozenset()):
        return {"off", "(none)", "none"}
    if spec.kind is float:
        return {f"{spec.default:g}"}
    return {str(spec.default)}


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_docs_give_the_tables_default(spec: Spec) -> None:
    cells = documented().get(spec.name)
    assert cells, f"{spec.name} is in no reference table under docs/ or in the README"
    for cell in cells:
        assert cell in shown(spec), (spec.name, cell)


def test_the_docs_list_no_variable_the_table_lacks() -> None:
    assert set(documented()) <= {spec.name for spec in SPECS}


NUMBERS = [spec for spec in SPECS if spec.kind is not None]


@pytest.mark.parametrize("spec", NUMBERS, ids=lambda spec: spec.name)
def test_the_loader_reads_the_tables_bounds(spec: Spec) -> None:
    bad = "maybe" if spec.kind is bool else str(spec.high * 2 + 1)
    with pytest.raises(SettingsError, match=spec.name):
        load_settings({spec.name: bad}, root=ROOT / "tests")
    if spec.kind is not bool:
        with pytest.raises(SettingsError, match=spec.name):
            load_settings({spec.name: str(spec.low - 1)}, root=ROOT / "tests")


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_holds_exactly_its_rows_with_the_tables_defaults(group: str) -> None:
    fields = GROUPS[group]._fields
    defaults = GROUPS[group]._field_defaults
    rows = {spec.field: spec for spec in SPECS if spec.group == group}
    assert set(fields) - {name for g, name in DERIVED if g == group} == set(rows)
    for name, spec in rows.items():
        assert defaults[name] == spec.default, spec.name
        assert spec.doc, spec.name


def test_the_groups_defaults_are_the_loaders() -> None:
    loaded = load_settings({}, root=ROOT / "tests")
    assert loaded == Settings()


def test_each_variable_lands_in_its_group() -> None:
    """A value set in the environment reaches the field its row names (one sample per kind)."""
    env = {
        "UPSTREAM_IDLE_TIMEOUT": "7.5",
        "MAX_MESSAGES": "9",
        "KEEPALIVE_INTERVAL": "3",
        "CORS_MAX_AGE": "60",
        "DEFAULT_FORMAT": "ui",
        "IPV6_PREFIX": "48",
        "AUTH_JWT_SECRET": "s" * 32,
        "AUTH_JWKS_TIMEOUT": "2",
    }
    loaded = load_settings(env, root=ROOT / "tests")
    assert loaded.upstream.idle_timeout == 7.5
    assert loaded.request.max_messages == 9
    assert loaded.stream.keepalive_interval == 3.0
    assert loaded.cors.max_age == 60
    assert loaded.output.default_format == "ui"
    assert loaded.protection.ipv6_prefix == 48
    assert loaded.protection.jwt is not None
    assert loaded.protection.jwt.jwks_timeout == 2.0
