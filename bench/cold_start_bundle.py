"""Cold start of the deployed bundle: the function and the pass-through, as Vercel builds them.

    .venv/bin/python -m bench.cold_start_bundle [--runs 9]

Each subject is built by the real builder (``tools/vercel``, offline, as ``make bundle`` does),
twice: by default (no bytecode in the bundle, and ``PYTHONDONTWRITEBYTECODE=1`` at run time, so
every cold start compiles every module it imports) and with ``VERCEL_PYTHON_COMPILEALL=1`` (the
builder ships precompiled bytecode). Each bundle is unpacked as the platform unpacks it and
spawned as the platform spawns it (IPC mode, ``vc__handler__python``, ``python -S``), and timed
from the spawn to the headers of its first streamed answer, from the demo upstream
(``bench/upstream.py``, a process of its own). The pass-through is ``bench/passthrough.py`` as
the project's ``api/generate.py``, with aiohttp's pins from ``requirements.txt``.

Subjects alternate within each round and the order rotates; medians and ranges are reported,
with the ratio paired round by round (function / pass-through of the same build mode, median
and quartiles). Beside the wall time, the CPU time the spawned process used until that answer
(``/proc/<pid>/task/*/schedstat``): the two agree where a cold start is all CPU, and part where
it waits on a slow disk. And, in the same rounds, what the subject's own modules cost:
``import api.generate`` timed after aiohttp and asyncio, in the unpacked bundle with its
environment. Against spawns that move by a fifth between rounds, the function's minus the
pass-through's is the steady measure of what the function adds. Results go to
``bench/results/cold_start_bundle.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_start import paired  # noqa: E402
from bench.procs import Server, cpu_seconds  # noqa: E402
from dev.vercel_cli import (  # noqa: E402
    COMPILE_BYTECODE,
    Build,
    build,
    cli_environ,
    clone_files,
    copy_files,
    materialize,
)
from tests.vercel_harness import ipc_runtime  # noqa: E402

# What the pass-through needs of requirements.txt: aiohttp and the packages it pulls in.
NOT_FOR_PASSTHROUGH = ("redis", "pyjwt", "cryptography", "cffi", "pycparser")


def passthrough_tree(dest: Path) -> Path:
    """A project whose one function is the pass-through, with the same aiohttp pins."""
    (dest / "api").mkdir(parents=True)
    (dest / "api" / "generate.py").write_text((ROOT / "bench" / "passthrough.py").read_text())
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
        if not line.lower().startswith(NOT_FOR_PASSTHROUGH)
    ]
    (dest / "requirements.txt").write_text("\n".join(pins) + "\n")
    (dest / ".python-version").write_text((ROOT / ".python-version").read_text())
    config = {"functions": {"api/generate.py": {"maxDuration": 60}}}
    (dest / "vercel.json").write_text(json.dumps(config))
    return dest


def bundle_mib(built: Build) -> float:
    return round(sum(path.stat().st_size for path in built.bundle().values()) / 2**20, 1)


def _environ(environment: dict[str, str], upstream: str) -> dict[str, str]:
    """What the platform gives the bundle's process (its .vc-config.json), and the upstream."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **environment}
    return env | {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": upstream}


def first_answer_seconds(
    root: Path, environment: dict[str, str], python: Path, upstream: str
) -> tuple[float, float]:
    """From spawning the function to the headers of its first streamed answer: the wall time,
    and the CPU time the function's process had used by then."""
    env = _environ(environment, upstream)
    command = [str(python), "-S", "-c", "import vc__handler__python"]
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    started = time.perf_counter()
    with ipc_runtime(root=root, command=command, environ=env) as runtime:
        connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=30)
        connection.request(
            "POST", "/api/generate", body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(runtime.process.pid)
        assert response.status == 200, response.status
        response.read()
        connection.close()
        return elapsed, cpu


OWN_IMPORT = (
    "import asyncio, json, time, aiohttp; started = time.perf_counter(); import api.generate; "
    "print(time.perf_counter() - started)"
)


def own_import_seconds(
    root: Path, environment: dict[str, str], python: Path, upstream: str
) -> float:
    """The subject's own import: ``api.generate`` and what it brings beyond aiohttp."""
    env = _environ(environment, upstream)
    out = subprocess.run(  # noqa: S603 - the bundle's own interpreter, fixed arguments
        [str(python), "-S", "-c", OWN_IMPORT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cold_start_bundle.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cold-bundle-") as tmp:
        work = Path(tmp)
        trees = {
            "function": lambda dest: copy_files(ROOT, clone_files(), dest),
            "pass-through": passthrough_tree,
        }
        subjects: dict[str, tuple[Path, dict[str, str], float]] = {}
        for name, make in trees.items():
            for mode, extra in (("default", None), ("bytecode", COMPILE_BYTECODE)):
                key = f"{name}, {mode}"
                built = build(make(work / key.replace(", ", "-")), extra_env=extra)
                unpacked = materialize(built, work / f"unpacked-{name}-{mode}")
                environment: dict[str, str] = dict(built.vc_config()["environment"])  # type: ignore[call-overload]
                subjects[key] = (unpacked, environment, bundle_mib(built))
        python = Path(cli_environ(work / "run-bin")["PATH"].split(":", 1)[0]) / "python3"
        samples: dict[str, list[float]] = {key: [] for key in subjects}
        cpu: dict[str, list[float]] = {key: [] for key in subjects}
        own: dict[str, list[float]] = {key: [] for key in subjects}
        with Server(["-m", "bench.upstream", "--pace", "0", "--tokens", "4"]) as upstream:
            names = list(subjects)
            for round_number in range(args.runs):
                shift = round_number % len(names)
                for key in names[shift:] + names[:shift]:
                    root, environment, _ = subjects[key]
                    wall, used = first_answer_seconds(root, environment, python, upstream.url)
                    samples[key].append(wall)
                    cpu[key].append(used)
                    own[key].append(own_import_seconds(root, environment, python, upstream.url))
    results: dict[str, Any] = {}
    for key, values in samples.items():
        results[key] = {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
            "cpu_ms": round(statistics.median(cpu[key]) * 1000, 1),
            "own_import_ms": round(statistics.median(own[key]) * 1000, 1),
            "bundle_mib": subjects[key][2],
        }
    for mode in ("default", "bytecode"):
        ours, base = f"function, {mode}", f"pass-through, {mode}"
        results[f"ratio, {mode}"] = {
            "of_medians": round(results[ours]["median_ms"] / results[base]["median_ms"], 2),
            "per_round": paired(samples[ours], samples[base]),
            "cpu_per_round": paired(cpu[ours], cpu[base]),
        }
        added = results[ours]["own_import_ms"] - results[base]["own_import_ms"]
        results[f"ratio, {mode}"]["added_by_own_import_ms"] = round(added, 1)
        results[f"ratio, {mode}"]["pass_through_plus_added"] = round(
            1 + added / results[base]["median_ms"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"cold start of the built bundle, spawn -> first answer's headers ({args.runs} runs)")
    for key, row in results.items():
        if "median_ms" in row:
            print(
                f"  {key:26} {row['median_ms']:7.1f} ms  [{row['min_ms']:.0f}..{row['max_ms']:.0f}]"
                f"  CPU {row['cpu_ms']:6.1f} ms  own import {row['own_import_ms']:5.1f} ms"
                f"  bundle {row['bundle_mib']} MiB"
            )
        else:
            wall, used = row["per_round"], row["cpu_per_round"]
            print(
                f"  {key:26} function / pass-through: {row['of_medians']}x of the medians;"
                f" per round {wall['median']}x [{wall['q1']}..{wall['q3']}],"
                f" CPU {used['median']}x [{used['q1']}..{used['q3']}];"
                f" own modules +{row['added_by_own_import_ms']} ms,"
                f" {row['pass_through_plus_added']}x the pass-through's median"
            )


if __name__ == "__main__":
    main()
