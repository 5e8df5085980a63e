"""Both deploy paths, built by Vercel's real CLI (``tools/vercel``, pinned) with no Vercel API.

- **Remote**: ``vercel deploy`` against a loopback stand-in (tests/vercel_api.py) shows exactly
  which files the CLI uploads after ``.vercelignore``; those files alone are then built, as the
  platform builds an upload.
- **Local**: ``vercel build`` in a full copy of the clone, what a CI pipeline runs before
  ``vercel deploy --prebuilt``. The builder ignores ``.vercelignore`` here; ``excludeFiles`` in
  ``vercel.json`` keeps the bundle lean.

Each build's output is checked file by file, then its function is laid out as the platform
unpacks it and started the way the platform starts it (IPC mode, ``vc__handler__python``, no
site-packages but the bundle's ``_vendor``), and a reply is streamed through it.

- **Compiled**: the local build again with ``VERCEL_PYTHON_COMPILEALL=1`` (docs/platform.md):
  the bundle carries bytecode for every module, and the function starts from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bench.cold_start_bundle import own_import_seconds
from dev.demo_upstream import DemoUpstream
from dev.vercel_cli import (
    COMPILE_BYTECODE,
    ROOT,
    Build,
    build,
    cli_environ,
    clone_files,
    copy_files,
    link_project,
    materialize,
    require_cli,
    runtime_pin,
)
from tests.conftest import CANARY_KEY
from tests.vercel_api import vercel_api
from tests.vercel_harness import START_TIMEOUT, IpcRuntime, ipc_runtime, sse_data

pytestmark = [
    pytest.mark.vercel,
    pytest.mark.timeout(300),
]
# The async tests share the module's loop, where the demo upstream and the stand-in API run.
on_module_loop = pytest.mark.asyncio(loop_scope="module")

VERCEL_JSON = json.loads((ROOT / "vercel.json").read_text())
# What the remote build needs, and all the CLI may upload: the function, the page, the settings.
UPLOADED_DIRS = ("api/", "lib/", "public/")
UPLOADED_FILES = {".python-version", ".vercelignore", "requirements.txt", "vercel.json"}


def pins(requirements: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line, names normalised as PyPI does."""
    out = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def vendored(built: Build) -> dict[str, str]:
    """``name -> version`` of each distribution in the bundle's ``_vendor``."""
    found = {}
    for name in built.bundle():
        match = re.fullmatch(r"_vendor/([^/]+)-([^-/]+)\.dist-info/METADATA", name)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_cli()
    return tmp_path_factory.mktemp("vercel")


@pytest.fixture(scope="module")
def clone() -> list[str]:
    return clone_files()


@pytest.fixture(scope="module")
def local_build(workdir: Path, clone: list[str]) -> Build:
    return build(copy_files(ROOT, clone, workdir / "clone"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uploaded(workdir: Path, clone: list[str]) -> list[str]:
    tree = copy_files(ROOT, clone, workdir / "deploy")
    link_project(tree)
    async with vercel_api() as api:
        proc = await asyncio.create_subprocess_exec(
            str(require_cli()),
            *("deploy", "--yes", "--api", api.url, "--token", "localtoken"),
            cwd=tree,
            env=cli_environ(workdir / "deploy-bin"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert api.deployments, api.requests
        return api.uploaded()


@pytest.fixture(scope="module")
def remote_build(workdir: Path, uploaded: list[str]) -> Build:
    return build(copy_files(ROOT, uploaded, workdir / "remote"))


@pytest.fixture(scope="module", params=["local", "remote"])
def built(request: pytest.FixtureRequest) -> Build:
    result: Build = request.getfixturevalue(f"{request.param}_build")
    return result


def test_deploy_uploads_only_what_the_build_needs(uploaded: list[str], clone: list[str]) -> None:
    expected = sorted(n for n in clone if n.startswith(UPLOADED_DIRS) or n in UPLOADED_FILES)
    assert uploaded == expected


def test_build_installs_exactly_what_requirements_txt_pins(built: Build) -> None:
    assert "Installing required dependencies from requirements.txt" in built.log
    assert "pyproject.toml" not in built.log
    # The builder adds its runtime, and the pip that seeds the virtual environment it creates.
    expected = {**pins(ROOT / "requirements.txt"), "vercel-runtime": runtime_pin()}
    found = vendored(built)
    assert found.pop("pip", None) is not None
    assert found == expected


def test_platform_tests_run_the_runtime_the_builder_ships() -> None:
    assert pins(ROOT / "requirements-dev.txt")["vercel-runtime"] == runtime_pin()


def test_bundle_holds_the_function_and_nothing_else(built: Build, clone: list[str]) -> None:
    own = {n for n in built.bundle() if not n.startswith("_vendor/")}
    code = {n for n in clone if n == "api/generate.py" or re.fullmatch(r"lib/[^/]+\.py", n)}
    # vercel.json is read at run time: its maxDuration is the function's deadline off Vercel too.
    assert own == code | {"vc__handler__python.py", "vercel.json"}
    for name in code:
        assert built.bundle()[name].read_bytes() == (ROOT / name).read_bytes(), name


def test_function_config_follows_vercel_json(built: Build) -> None:
    config = built.vc_config()
    assert config["maxDuration"] == VERCEL_JSON["functions"]["api/generate.py"]["maxDuration"]
    assert config["runtime"] == "python3.12"
    assert config["handler"] == "vc__handler__python.vc_handler"
    assert config["supportsResponseStreaming"] is True


def test_routes_hold_every_rewrite(built: Build) -> None:
    routes = json.loads((built.output / "config.json").read_text())["routes"]
    rewrites = [r for r in routes if r.get("check") and "dest" in r and "src" in r]
    for rewrite in VERCEL_JSON["rewrites"]:
        sample = re.sub(r":\w+[*+?]?(\([^)]*\))?", "sample-1", rewrite["source"])
        matching = [r for r in rewrites if re.fullmatch(r["src"].strip("^$"), sample)]
        assert matching, (rewrite, rewrites)
        path = rewrite["destination"].split("?", 1)[0]
        assert matching[0]["dest"].startswith(path), (rewrite, matching[0])


def test_public_is_served_as_static_files(built: Build, clone: list[str]) -> None:
    public = [n for n in clone if n.startswith("public/")]
    assert public
    for name in public:
        static = built.output / "static" / name.removeprefix("public/")
        assert static.read_bytes() == (ROOT / name).read_bytes(), name


# -- the built function, started as the platform starts it ------------------------------------


@pytest.fixture(scope="module")
def function(
    built: Build, workdir: Path, served_upstream: tuple[DemoUpstream, str]
) -> Iterator[IpcRuntime]:
    unpacked = materialize(built, workdir / f"unpacked-{built.tree.name}")
    with start_unpacked(built, unpacked, workdir, served_upstream[1]) as started:
        yield started


@contextlib.contextmanager
def start_unpacked(
    built: Build, unpacked: Path, workdir: Path, upstream_url: str
) -> Iterator[IpcRuntime]:
    """The unpacked function, started as the platform starts it, with the demo upstream."""
    python = Path(cli_environ(workdir / "run-bin")["PATH"].split(":", 1)[0]) / "python3"
    config = built.vc_config()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **config["environment"]}  # type: ignore[dict-item]
    env |= {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": upstream_url}
    # -S: no site-packages; the bundle's own files (the working directory) and its _vendor,
    # which the handler adds itself, are all the function can import.
    command = [str(python), "-S", "-c", "import vc__handler__python"]
    with ipc_runtime(root=unpacked, command=command, environ=env) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@on_module_loop
async def test_built_function_streams_a_reply(
    function: IpcRuntime, served_upstream: tuple[DemoUpstream, str], http: aiohttp.ClientSession
) -> None:
    demo, _ = served_upstream
    body = json.dumps({"messages": [{"role": "user", "content": "Say hello"}]})
    url = function.base_url + "/api/generate"
    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [data async for data in sse_data(resp.content)]
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for data in events[:-1]
        for choice in json.loads(data)["choices"]
    )
    assert text == demo.reply
    assert demo.seen[-1].headers["Authorization"] == f"Bearer {CANARY_KEY}"
    assert CANARY_KEY not in function.logs()


@on_module_loop
async def test_built_function_refuses_get(
    function: IpcRuntime, http: aiohttp.ClientSession
) -> None:
    async with http.get(function.base_url + "/api/generate") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "OPTIONS, POST"
        assert (await resp.json())["error"]["type"] == "method_not_allowed"


# --- precompiled bytecode (VERCEL_PYTHON_COMPILEALL=1) ------------------------------------------


def bytecode_for(source: str) -> str:
    """Where the interpreter looks for a module's bytecode (hash-based, next to the source)."""
    folder, _, name = source.rpartition("/")
    return f"{folder}/__pycache__/{name.removesuffix('.py')}.cpython-312.pyc"


@pytest.fixture(scope="module")
def compiled_build(workdir: Path, clone: list[str]) -> Build:
    return build(copy_files(ROOT, clone, workdir / "compiled"), extra_env=COMPILE_BYTECODE)


def test_a_default_build_compiles_every_module_at_every_cold_start(local_build: Build) -> None:
    """Why the flag matters: no bytecode in the bundle, and none may be written at run time."""
    assert [name for name in local_build.bundle() if name.endswith(".pyc")] == []
    assert local_build.vc_config()["environment"]["PYTHONDONTWRITEBYTECODE"] == "1"  # type: ignore[index]


def test_a_compiled_build_ships_bytecode_for_every_module(compiled_build: Build) -> None:
    bundle = compiled_build.bundle()
    ours = [name for name in bundle if name.endswith(".py") and name.startswith(("api/", "lib/"))]
    aiohttp_sources = [name for name in bundle if re.fullmatch(r"_vendor/aiohttp/\w+\.py", name)]
    assert "lib/handler.py" in ours
    assert "_vendor/aiohttp/client.py" in aiohttp_sources
    missing = [name for name in ours + aiohttp_sources if bytecode_for(name) not in bundle]
    assert missing == []


@pytest.fixture(scope="module")
def compiled_function(
    compiled_build: Build, workdir: Path, served_upstream: tuple[DemoUpstream, str]
) -> Iterator[IpcRuntime]:
    """The compiled function with every source of ours made unreadable as Python: it can only
    start from its bytecode (the builder writes unchecked hash-based .pyc, valid whatever the
    source holds or its mtime after unpacking)."""
    unpacked = materialize(compiled_build, workdir / "unpacked-compiled")
    for source in [unpacked / "api" / "generate.py", *(unpacked / "lib").glob("*.py")]:
        source.write_text("this is not python\n")
    with start_unpacked(compiled_build, unpacked, workdir, served_upstream[1]) as started:
        yield started


@on_module_loop
async def test_a_compiled_function_starts_from_its_bytecode(
    compiled_function: IpcRuntime, served_upstream: tuple[DemoUpstream, str]
) -> None:
    demo, _ = served_upstream
    url = compiled_function.base_url + "/api/generate"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"prompt": "Say hello"}) as resp,
    ):
        assert resp.status == 200
        events = [data async for data in sse_data(resp.content)]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(data)["choices"][0]["text"] for data in events[:-1])
    assert text == demo.reply


def test_the_cold_start_bench_times_the_bundles_own_modules(
    local_build: Build, workdir: Path, served_upstream: tuple[DemoUpstream, str]
) -> None:
    """``bench.cold_start_bundle`` reports what the function's own modules add to a deployed
    cold start by importing them in the unpacked bundle, with the bundle's interpreter and
    environment: those modules and no others (the tree's ``lib/`` is not on its path)."""
    unpacked = materialize(local_build, workdir / "unpacked-own-import")
    python = Path(cli_environ(workdir / "run-bin")["PATH"].split(":", 1)[0]) / "python3"
    environment = dict(local_build.vc_config()["environment"])  # type: ignore[call-overload]
    seconds = own_import_seconds(unpacked, environment, python, served_upstream[1])
    assert 0 < seconds < START_TIMEOUT
    (unpacked / "lib" / "handler.py").write_text("this is not python\n")
    with pytest.raises(subprocess.CalledProcessError):
        own_import_seconds(unpacked, environment, python, served_upstream[1])
