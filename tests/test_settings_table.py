"""The settings table (lib/config.SPECS) is the one place a setting's bounds and default are
written: the loader reads it, and the docs' reference tables must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lib.config import SPECS, Settings, SettingsError, Spec, default, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", re.M)


def documented() -> dict[str, list[str]]:
    """Each variable's default cell in every reference table that lists it."""
    rows: dict[str, list[str]] = {}
    for path in DOCS:
        for name, cell in ROW.findall(path.read_text(encoding="utf-8")):
            rows.setdefault(name, []).append(cell.strip().strip("`"))
    return rows


def shown(spec: Spec) -> set[str]:
    """How the docs may write the default."""
    if spec.kind is bool:
        return {"true" if spec.default else "false"}
    if spec.off_at_zero and not spec.default:
        return {"off", "(none)", "none"}
    return {f"{spec.default:g}" if spec.kind is float else str(int(spec.default))}


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_docs_give_the_tables_default(spec: Spec) -> None:
    cells = documented().get(spec.name)
    assert cells, f"{spec.name} is in no reference table under docs/ or in the README"
    for cell in cells:
        assert cell in shown(spec), (spec.name, cell)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_loader_reads_the_tables_bounds(spec: Spec) -> None:
    jwt = {"AUTH_JWT_SECRET": "s" * 32}  # the AUTH_JWKS_* settings are read only with JWTs on
    bad = "maybe" if spec.kind is bool else str(spec.high * 2 + 1)
    with pytest.raises(SettingsError, match=spec.name):
        load_settings({**jwt, spec.name: bad}, root=ROOT / "tests")
    if spec.kind is not bool:
        with pytest.raises(SettingsError, match=spec.name):
            load_settings({**jwt, spec.name: str(spec.low - 1)}, root=ROOT / "tests")


def test_the_dataclass_defaults_are_the_loaders() -> None:
    loaded = load_settings({}, root=ROOT / "tests")
    assert loaded.max_tokens == Settings().max_tokens == default("MAX_TOKENS")
    assert loaded.protection == Settings().protection
    for spec in SPECS:
        assert spec.doc, spec.name
