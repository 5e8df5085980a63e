"""The README's layout section names every module, and every path it names exists: a newcomer
finds any behaviour in one guess only if the map matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    return re.findall(r"^([\w./-]+)\s", block, re.M)


def test_every_module_is_on_the_map() -> None:
    listed = set(layout_paths())
    modules = {f"lib/{p.name}" for p in (ROOT / "lib").glob("*.py") if p.name != "__init__.py"}
    assert modules - listed == set()
    assert "api/generate.py" in listed


def test_every_path_on_the_map_exists() -> None:
    missing = [path for path in layout_paths() if not (ROOT / path).exists()]
    assert missing == []
