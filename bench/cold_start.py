"""Cold start: what importing the function costs, and how long a new instance takes to answer.

    .venv/bin/python -m bench.cold_start [--runs 15]

(a) `python -X importtime -c "import api.generate"`: the total and the heaviest top-level imports;
    and the wall time of the import statement itself in a fresh interpreter, against importing
    aiohttp alone and against a bare ASGI app of a few lines.
(b) Spawning the function under Vercel's real runtime in IPC mode (tests/vercel_harness.py) until
    its first request is answered, against the bare app under the same runtime. The request is
    `GET /api/generate` (a 405 from our code), so no network is involved.

Subjects alternate within each round so that drift (a busy machine, a warming disk cache) hits
them alike; medians are reported. Results go to bench/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.vercel_harness import handler_environ, ipc_runtime  # noqa: E402

BARE_APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

# The pass-through (bench/passthrough.py: aiohttp, one shared session) with a GET answered
# 405 on the spot, as our function answers it: the cold start a relay needs at the least.
PASSTHROUGH_APP = (
    (ROOT / "bench" / "passthrough.py").read_text()
    + """

_relay = app


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await _relay(scope, receive, send)
"""
)

TIMED_IMPORT = (
    "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
)


def import_seconds(root: Path, module: str) -> float:
    """Wall time of `import module` in a fresh interpreter (interpreter start excluded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as on Vercel (a read-only bundle): nothing is cached
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", TIMED_IMPORT.format(module=module)],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def importtime(root: Path, module: str) -> dict[str, Any]:
    """Parse `-X importtime`: the module's cumulative time and its heaviest direct imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as on Vercel (a read-only bundle): nothing is cached
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[tuple[int, int, str]] = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative_us, name = line.split("|", 2)  # "import time: self | cumulative | name"
        rows.append((len(name) - len(name.lstrip()), int(cumulative_us), name.strip()))
    # A module's own imports are listed just before it, one level deeper.
    at = next(i for i, (_, _, name) in enumerate(rows) if name == module)
    depth, total, _ = rows[at]
    children: list[tuple[int, str]] = []
    for child_depth, cum, name in reversed(rows[:at]):
        if child_depth <= depth:
            break
        if child_depth == depth + 2:  # importtime indents each level by two spaces
            children.append((cum, name))
    top = sorted(children, reverse=True)
    return {
        "total_ms": total / 1000,
        "top": [{"module": name, "cumulative_ms": cum / 1000} for cum, name in top[:8]],
        "modules_imported": len(rows),
    }


def first_answer_seconds(root: Path, entrypoint: str) -> tuple[float, dict[str, Any]]:
    """From spawning the runtime to the first response's last byte; and what it reported."""
    started = time.perf_counter()
    env = {"PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    with ipc_runtime(root, entrypoint, env=env) as runtime:
        connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=30)
        connection.request("GET", "/" + entrypoint.removesuffix(".py"))
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        connection.close()
        return elapsed, dict(runtime.started["payload"])


def compiled_copy(target: Path) -> Path:
    """The function's files with their bytecode compiled in (hash-checked ``.pyc``, valid
    whatever the timestamps), as Vercel's builder ships them with ``VERCEL_PYTHON_COMPILEALL=1``
    in the build environment; by default it ships sources only, and with the bundle read-only
    every cold start compiles ``lib/`` again. The installed packages have theirs either way."""
    for name in ("api", "lib"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("vercel.json", "requirements.txt"):
        shutil.copy2(ROOT / name, target / name)
    command = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash"]
    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [*command, str(target / "api"), str(target / "lib")], check=True
    )
    return target


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def paired(ours: list[float], base: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios ``ours / base``."""
    ratios = [a / b for a, b in zip(ours, base, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {
        "median": round(statistics.median(ratios), 2),
        "q1": round(low, 2),
        "q3": round(high, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cold_start.json")
    args = parser.parse_args()
    handler_environ(ROOT, "api/generate.py")  # fail early if the harness changed shape

    with tempfile.TemporaryDirectory(prefix="bare-") as tmp:
        bare_root = Path(tmp)
        (bare_root / "api").mkdir()
        (bare_root / "api" / "bare.py").write_text(BARE_APP)
        (bare_root / "api" / "passthrough.py").write_text(PASSTHROUGH_APP)
        compiled = compiled_copy(bare_root / "compiled")

        imports: dict[str, Callable[[], float]] = {
            "api.generate": lambda: import_seconds(ROOT, "api.generate"),
            "api.generate, bytecode": lambda: import_seconds(compiled, "api.generate"),
            "aiohttp alone": lambda: import_seconds(ROOT, "aiohttp"),
            "pass-through": lambda: import_seconds(bare_root, "api.passthrough"),
            "bare ASGI app": lambda: import_seconds(bare_root, "api.bare"),
        }
        spawns: dict[str, Callable[[], tuple[float, dict[str, Any]]]] = {
            "api/generate.py": lambda: first_answer_seconds(ROOT, "api/generate.py"),
            "api/generate.py, bytecode": lambda: first_answer_seconds(compiled, "api/generate.py"),
            "pass-through": lambda: first_answer_seconds(bare_root, "api/passthrough.py"),
            "bare ASGI app": lambda: first_answer_seconds(bare_root, "api/bare.py"),
        }
        import_samples: dict[str, list[float]] = {name: [] for name in imports}
        spawn_samples: dict[str, list[float]] = {name: [] for name in spawns}
        reported: dict[str, list[dict[str, Any]]] = {name: [] for name in spawns}
        for _ in range(args.runs):
            for name, measure in imports.items():
                import_samples[name].append(measure())
            for name, spawn in spawns.items():
                seconds, payload = spawn()
                spawn_samples[name].append(seconds)
                reported[name].append(payload)
        profile = importtime(ROOT, "api.generate")

    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "runs": args.runs,
        "import_wall_ms_median": {k: median_ms(v) for k, v in import_samples.items()},
        "spawn_to_first_answer_ms_median": {k: median_ms(v) for k, v in spawn_samples.items()},
        "runtime_reported_ms_median": {
            name: {
                key: statistics.median(p[key] for p in payloads)
                for key in ("initDuration", "userInitDuration")
            }
            for name, payloads in reported.items()
        },
        "importtime_api_generate": profile,
    }
    imports_ms, spawns_ms = (
        result["import_wall_ms_median"],
        result["spawn_to_first_answer_ms_median"],
    )
    result["function_vs_passthrough"] = {
        "import": round(imports_ms["api.generate"] / imports_ms["pass-through"], 2),
        "import, bytecode": round(
            imports_ms["api.generate, bytecode"] / imports_ms["pass-through"], 2
        ),
        "spawn_to_first_answer, bytecode": round(
            spawns_ms["api/generate.py, bytecode"] / spawns_ms["pass-through"], 2
        ),
        "spawn_to_first_answer": round(spawns_ms["api/generate.py"] / spawns_ms["pass-through"], 2),
    }
    # The same ratios round by round (each round spawns every subject once): the spawn times
    # drift by a third over a run on a shared machine, and a round's subjects drift together.
    result["function_vs_passthrough_per_round"] = {
        name: paired(spawn_samples[subject], spawn_samples["pass-through"])
        for name, subject in (
            ("spawn_to_first_answer", "api/generate.py"),
            ("spawn_to_first_answer, bytecode", "api/generate.py, bytecode"),
        )
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"cold start, medians of {args.runs} alternating runs (Python {result['python']})")
    print(f"{'import (fresh interpreter)':<34}{'ms':>8}")
    for name, value in result["import_wall_ms_median"].items():
        print(f"  {name:<32}{value:>8.1f}")
    print(f"{'spawn under vercel-runtime -> 1st answer':<42}{'ms':>8}   runtime init / user init")
    for name, value in result["spawn_to_first_answer_ms_median"].items():
        init = result["runtime_reported_ms_median"][name]
        print(f"  {name:<40}{value:>8.1f}   {init['initDuration']} / {init['userInitDuration']}")
    ratios = result["function_vs_passthrough"]
    print(
        f"function / pass-through: import {ratios['import']}x, "
        f"spawn to first answer {ratios['spawn_to_first_answer']}x; with bytecode: "
        f"{ratios['import, bytecode']}x, {ratios['spawn_to_first_answer, bytecode']}x"
    )
    rounds = result["function_vs_passthrough_per_round"]
    print(
        "per round (median [quartiles]): "
        + "; ".join(f"{k} {v['median']}x [{v['q1']}..{v['q3']}]" for k, v in rounds.items())
    )
    print(f"-X importtime api.generate: {profile['total_ms']:.1f} ms cumulative; heaviest:")
    for row in profile["top"]:
        print(f"  {row['module']:<40}{row['cumulative_ms']:>8.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
