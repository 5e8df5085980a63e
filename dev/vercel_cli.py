"""Vercel's real CLI (pinned in ``tools/vercel``), run offline: ``vercel build`` and its bundle.

``vercel build`` needs no Vercel API: a hand-written ``.vercel/project.json`` links the project,
``uv`` (the version ``@vercel/python`` pins) and Python 3.12 as ``python3`` come first on PATH,
and the build runs in a copy, because a successful build writes a generated ``pyproject.toml``
and ``uv.lock`` into the tree it builds. ``tests/test_vercel_build.py`` drives this module;
``python -m dev.vercel_cli bundle`` builds the working tree the same way and prints what the
function bundle holds and weighs.

``python -m dev.vercel_cli bundle --compile`` builds with ``VERCEL_PYTHON_COMPILEALL=1``:
``@vercel/python`` then ships precompiled bytecode (``COMPILE_BYTECODE``, docs/platform.md).

``python -m dev.vercel_cli dev [ARGS]`` (``make vercel-dev``) runs ``vercel dev`` on the project:
the CLI 64 / ``@vercel/python`` 25 pair fails every request to a Python function whose
``vercel.json`` entry sets ``maxDuration`` or ``memory`` (vercel/vercel#17620), so it derives
``vercel.dev.json`` from ``vercel.json`` without those two keys, anew on every start, and passes
it with ``--local-config``. The deployed ``vercel.json`` keeps its ``maxDuration``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools" / "vercel"
VERCEL = TOOLS / "node_modules" / ".bin" / "vercel"
BUILDER = TOOLS / "node_modules" / "@vercel" / "python"
FUNCTION = "api/generate"
PROJECT_JSON = {"projectId": "prj_local", "orgId": "team_local", "settings": {"framework": None}}
BUILD_TIMEOUT = 240.0
DEV_CONFIG = "vercel.dev.json"
# Function keys `vercel dev` rejects in a Python builder's output (vercel/vercel#17620).
DEV_UNSUPPORTED = ("maxDuration", "memory")
# The builder's opt-in (read from the build's environment): precompile every module the function
# ships, so a cold start loads bytecode instead of compiling sources. Without it the bundle has
# no .pyc and runs with PYTHONDONTWRITEBYTECODE=1: every cold start compiles everything it imports.
COMPILE_BYTECODE = {"VERCEL_PYTHON_COMPILEALL": "1"}


def require_cli() -> Path:
    """The pinned CLI, or a loud error naming the command that installs it."""
    if not VERCEL.exists():
        raise RuntimeError(f"{VERCEL} is missing: run `make deps-vercel`")
    return VERCEL


def clone_files(root: Path = ROOT) -> list[str]:
    """The files a fresh clone of ``root`` has: tracked plus new files git would not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted(name for name in out.split("\0") if name and (root / name).is_file())


def copy_files(root: Path, names: Iterable[str], dest: Path) -> Path:
    """Copy ``names`` (paths relative to ``root``) into ``dest``; return ``dest``."""
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def link_project(tree: Path) -> None:
    """What ``vercel link`` would write, without an account: the build reads only this."""
    (tree / ".vercel").mkdir(exist_ok=True)
    (tree / ".vercel" / "project.json").write_text(json.dumps(PROJECT_JSON))


def dev_config(config: Mapping[str, object]) -> dict[str, object]:
    """``vercel.json`` as ``vercel dev`` can run it: every function without ``DEV_UNSUPPORTED``."""
    derived = copy.deepcopy(dict(config))
    functions = derived.get("functions")
    if isinstance(functions, dict):
        for settings in functions.values():
            if isinstance(settings, dict):
                for key in DEV_UNSUPPORTED:
                    settings.pop(key, None)
    return derived


def write_dev_config(tree: Path) -> Path:
    """Derive ``vercel.dev.json`` from the tree's ``vercel.json`` (git ignores the copy)."""
    config = json.loads((tree / "vercel.json").read_text())
    target = tree / DEV_CONFIG
    target.write_text(json.dumps(dev_config(config), indent=2) + "\n")
    return target


def dev_command(tree: Path, args: Iterable[str] = ()) -> list[str]:
    """``vercel dev`` on ``tree`` with the derived config (written first)."""
    config = write_dev_config(tree)
    return [str(require_cli()), "dev", "--local-config", str(config), *args]


def cli_environ(tools_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the CLI runs in: Python 3.12 as ``python3`` and the pinned ``uv`` first on
    PATH (the builder looks for both there), telemetry off, no inherited Vercel or OpenAI state."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    links = {
        "python3": Path(getattr(sys, "_base_executable", sys.executable)),
        "uv": Path(sys.executable).parent / "uv",
    }
    for name, target in links.items():
        if not target.exists():
            raise RuntimeError(f"{target} is missing: run `make test` (it installs {name})")
        link = tools_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERCEL", "OPENAI_"))}
    env["PATH"] = f"{tools_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VERCEL_TELEMETRY_DISABLED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Build:
    """One finished ``vercel build``: the tree it ran in, its ``.vercel/output``, its log."""

    tree: Path
    log: str

    @property
    def output(self) -> Path:
        return self.tree / ".vercel" / "output"

    @property
    def function_dir(self) -> Path:
        return self.output / "functions" / f"{FUNCTION}.func"

    def vc_config(self) -> dict[str, object]:
        config: dict[str, object] = json.loads((self.function_dir / ".vc-config.json").read_text())
        return config

    def bundle(self) -> dict[str, Path]:
        """Every file of the function: path in the bundle -> file on disk. A local build lists
        most of them in ``filePathMap`` (paths in the tree) instead of copying them."""
        files = {
            str(p.relative_to(self.function_dir)): p
            for p in self.function_dir.rglob("*")
            if p.is_file() and p.name != ".vc-config.json"
        }
        file_map = self.vc_config().get("filePathMap") or {}
        assert isinstance(file_map, dict)
        files.update({str(k): self.tree / str(v) for k, v in file_map.items()})
        return files


def build(
    tree: Path, tools_dir: Path | None = None, extra_env: Mapping[str, str] | None = None
) -> Build:
    """Run the real ``vercel build --yes`` in ``tree`` (linked first), with ``extra_env`` in the
    build's environment (``COMPILE_BYTECODE``, say); raise with its log."""
    link_project(tree)
    tools = tools_dir or tree.parent / f"{tree.name}-bin"
    env = cli_environ(tools, extra_env)
    # --global-config: the CLI's own state (telemetry ids, auth) stays out of the user's home.
    proc = subprocess.run(  # noqa: S603  # the pinned CLI, fixed arguments
        [str(require_cli()), "build", "--yes", "--global-config", str(tools / "home")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"vercel build failed ({proc.returncode}):\n{log}")
    return Build(tree, log)


def materialize(built: Build, dest: Path) -> Path:
    """Lay the function out as the platform unpacks it: each bundle file at its bundle path."""
    for name, source in built.bundle().items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def runtime_pin() -> str:
    """The ``vercel-runtime`` version the pinned ``@vercel/python`` installs into every bundle."""
    source = (BUILDER / "dist" / "index.js").read_text()
    marker = 'VERCEL_RUNTIME_VERSION = "'
    start = source.index(marker) + len(marker)
    return source[start : source.index('"', start)]


def summarize(built: Build) -> str:
    """What the bundle holds, by top-level entry (``_vendor`` per package), and its weight."""
    sizes: dict[str, int] = {}
    for name, path in built.bundle().items():
        parts = name.split("/")
        key = "/".join(parts[:2]) if parts[0] == "_vendor" and len(parts) > 1 else parts[0]
        sizes[key] = sizes.get(key, 0) + path.stat().st_size
    total = sum(sizes.values())
    lines = [f"{FUNCTION}.func: {len(built.bundle())} files, {total / 2**20:.1f} MiB"]
    for key, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {size / 2**10:9.0f} KiB  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``bundle``: build a copy of the working tree as a fresh clone would be built, and list the
    function bundle. ``dev``: run ``vercel dev`` on the project with the derived config."""
    parser = argparse.ArgumentParser(prog="python -m dev.vercel_cli")
    parser.add_argument("command", choices=("bundle", "dev"))
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="dev: passed on to `vercel dev`; bundle: --compile (with precompiled bytecode)",
    )
    options = parser.parse_args(argv)
    if options.command == "dev":
        command = dev_command(ROOT, options.args)
        env = cli_environ(ROOT / ".vercel" / "bin")
        os.execve(command[0], command, env)  # noqa: S606  # the pinned CLI replaces us
    with tempfile.TemporaryDirectory(prefix="vercel-build-") as tmp:
        tree = copy_files(ROOT, clone_files(), Path(tmp) / "tree")
        extra = COMPILE_BYTECODE if "--compile" in options.args else None
        print(summarize(build(tree, extra_env=extra)))


if __name__ == "__main__":
    main()
