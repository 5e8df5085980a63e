"""Where a relay's memory per open stream goes, at real pacing (issue 15).

    .venv/bin/python -m bench.memory [--streams 300] [--top 40]
    .venv/bin/python -m bench.memory --trace --streams 200   # and the lines that allocated it

Runs the pass-through and the function in turn as bench W3 does (the bench upstream, 20 ms
between events, 200 events per stream, starts spread over 1 s; a fresh relay process warmed by
one short stream), and in each relay, once before the streams and once while all of them are
open, counts the live objects the collector tracks by kind (bench/subject.py,
``BENCH_CENSUS``) and reads pymalloc's statistics. Prints, per open stream: RSS, the bytes in
pymalloc blocks, the blocks the function holds beyond the pass-through by size class, and the
kinds of object with the largest difference. Strings and bytes are not tracked by the
collector; the size classes count them.

With ``--trace`` the relays run under tracemalloc, and it also prints the source lines whose
allocations are still live while the streams run, function minus pass-through: a read or a
parsed dict that something keeps shows up there, with the line that made it. Tracing slows a
relay by about half, so keep the streams few enough that it does not fall behind the pacing
(200): a relay that falls behind holds the backlog, and that is all the lines would show.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.client import run_streams, stream_once
from bench.procs import ROOT, Server, fast_loop_policy, raise_fd_limit, rss_bytes
from bench.run import FN_CHAT, RESULTS, chat_body

Census = dict[str, tuple[int, int]]  # kind -> (objects, bytes)


@dataclass
class Run:
    """One relay's figures, per open stream."""

    errors: int
    rss: float
    census: dict[str, tuple[float, float]]  # kind -> (objects, bytes)
    blocks: dict[int, float]  # pymalloc size class -> blocks in use
    sites: dict[str, float]  # with --trace: source line -> bytes it allocated, still live


async def _dump(pid: int, prefix: Path, n: int) -> tuple[Census, dict[int, int]]:
    os.kill(pid, signal.SIGUSR1)
    census = prefix.with_name(f"{prefix.name}-{n}.census")
    for _ in range(600):  # bench pacing: the relay writes its census between two events
        await asyncio.sleep(0.05)
        if census.exists():
            break
    else:
        raise RuntimeError(f"no census at {census}")
    counts: Census = {}
    for line in census.read_text().splitlines():
        kind, number, size = line.rsplit("\t", 2)
        counts[kind] = (int(number), int(size))
    blocks: dict[int, int] = {}
    pym = census.with_suffix(".pym").read_text()
    for match in re.finditer(r"^\s+\d+\s+(\d+)\s+\d+\s+(\d+)\s+\d+\s*$", pym, re.MULTILINE):
        blocks[int(match[1])] = int(match[2])
    return counts, blocks


def _sites(prefix: Path, streams: int) -> dict[str, float]:
    """Live bytes per stream by the source line that allocated them (snapshot 1 over 0)."""
    import tracemalloc

    before, during = (
        tracemalloc.Snapshot.load(str(prefix.with_name(f"{prefix.name}-{n}.trace"))) for n in (0, 1)
    )
    sites: collections.Counter[str] = collections.Counter()
    for stat in during.compare_to(before, "lineno"):
        frame = stat.traceback[0]
        name = re.sub(r".*/(site-packages|python3\.\d+)/", "", frame.filename)
        sites[f"{name.replace(str(ROOT) + '/', '')}:{frame.lineno}"] += stat.size_diff / streams
    return sites


async def _measure(kind: str, upstream: str, streams: int, tmp: Path, trace: bool) -> Run:
    prefix = tmp / kind
    extra = {"BENCH_CENSUS": str(prefix), **({"PYTHONTRACEMALLOC": "1"} if trace else {})}
    os.environ.update(extra)
    try:
        relay = Server(
            ["-m", "bench.subject", kind, "--upstream", upstream],
            log=RESULTS / "logs" / f"memory-{kind}.log",
        )
    finally:
        for name in extra:
            del os.environ[name]
    body = FN_CHAT if kind == "function" else chat_body()
    try:
        await stream_once(relay.url, body, limit=0.5)  # warmed as bench W3 warms it
        rss0 = rss_bytes(relay.pid)
        census0, blocks0 = await _dump(relay.pid, prefix, 0)
        running = asyncio.ensure_future(run_streams(relay.url, body, streams, stagger=1.0))
        await asyncio.sleep(2.5)  # bench pacing: every stream started, none near its end (4.2 s)
        rss1 = rss_bytes(relay.pid)
        census1, blocks1 = await _dump(relay.pid, prefix, 1)
        results = await running
    finally:
        relay.stop()
    before = census0.get
    return Run(
        errors=sum(not r.ok for r in results),
        rss=(rss1 - rss0) / streams,
        census={
            k: ((n - before(k, (0, 0))[0]) / streams, (z - before(k, (0, 0))[1]) / streams)
            for k, (n, z) in census1.items()
        },
        blocks={size: (n - blocks0.get(size, 0)) / streams for size, n in blocks1.items()},
        sites=_sites(prefix, streams) if trace else {},
    )


async def measure(streams: int, top: int, trace: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    upstream = Server(["-m", "bench.upstream", "--pace", "0.02", "--tokens", "200"])
    try:
        pt = await _measure("passthrough", upstream.url, streams, tmp, trace)
        fn = await _measure("function", upstream.url, streams, tmp, trace)
    finally:
        upstream.stop()
    print(f"{streams} paced streams open, per stream (errors: {pt.errors} / {fn.errors}):")
    for name, run in (("pass-through", pt), ("function", fn)):
        pymalloc = sum(size * n for size, n in run.blocks.items()) / 1024
        print(f"  {name:12} RSS {run.rss / 1024:5.1f} KiB, pymalloc blocks {pymalloc:5.1f} KiB")
    print("pymalloc blocks the function holds beyond the pass-through, by size class:")
    for size in sorted(fn.blocks):
        extra = fn.blocks[size] - pt.blocks.get(size, 0.0)
        if abs(extra * size) >= 64:
            print(f"  {size:4} B: {extra:+6.1f} blocks ({extra * size:+6.0f} B)")
    print("tracked objects, function minus pass-through (objects, bytes):")
    none = (0.0, 0.0)
    diff = collections.Counter(
        {k: fn.census.get(k, none)[1] - pt.census.get(k, none)[1] for k in {*fn.census, *pt.census}}
    )
    for k, size in diff.most_common(top):
        if size < 16:
            break
        number = fn.census.get(k, none)[0] - pt.census.get(k, none)[0]
        print(f"  {number:+6.2f} {size:+7.0f} B  {k}")
    if fn.sites:
        print("live bytes by the line that allocated them, function minus pass-through:")
        sites = collections.Counter(
            {k: fn.sites.get(k, 0.0) - pt.sites.get(k, 0.0) for k in {*fn.sites, *pt.sites}}
        )
        for site, size in sites.most_common(top):
            if size < 16:
                break
            print(f"  {size:+7.0f} B  {site}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="memory per open stream, by kind")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--trace", action="store_true", help="and the lines that allocated it")
    args = parser.parse_args(argv)
    raise_fd_limit()
    fast_loop_policy()
    asyncio.run(measure(args.streams, args.top, args.trace))
    sys.exit(0)


if __name__ == "__main__":
    main()
