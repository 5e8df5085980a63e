"""Profile one relay on the paced workload with py-spy (issue 15).

    .venv/bin/pip install py-spy        # a tool for this, not a dependency of the project
    .venv/bin/python -m bench.profile function 300 [--loop uvloop+httptools]

Starts the bench upstream (20 ms between events, 200 events per stream) and the relay as the
suite does, warms it, records the relay process with py-spy while ``streams`` paced streams run
(starts spread over 1 s), and prints the relay's CPU per 100k events, the functions with the
most samples of their own, and the samples under a few groups (the per-read timer, the SSE
decoder, the translation, the writes) as shares of all samples. The raw py-spy stacks go to
bench/results/profile-<kind>-<streams>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys

from bench.client import run_streams
from bench.procs import ROOT, Server, cpu_seconds, fast_loop_policy, raise_fd_limit
from bench.run import AHEAD_UP_TO_STREAMS, FN_CHAT, RESULTS, chat_body

GROUPS = {
    "per-read timer (asyncio.timeouts)": "asyncio/timeouts.py",
    "SSE decoder (lib/sse.py)": "lib/sse.py",
    "translation (relay._translate_events)": "_translate_events",
    "loop detector (lib/repetition.py)": "lib/repetition.py",
    "ASGI send layers (lib/asgi.py)": "lib/asgi.py",
    "h11 + uvicorn send": "RequestResponseCycle.send",
    "socket writes (transport.write)": "_SelectorSocketTransport.write",
    "upstream reads (aiohttp)": "aiohttp/streams.py",
    "request set-up (open_with_retries)": "open_with_retries",
}


def summarise(raw: str, top: int = 20) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        own[re.sub(r":\d+\)", ")", stack.split(";")[-1])] += n
        for name, needle in GROUPS.items():
            if needle in stack:
                groups[name] += n
    out = [f"samples: {total}", "own samples:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("inclusive, by group:")
    out += [f"  {100 * groups[name] / total:5.1f}%  {name}" for name in GROUPS]
    return out


async def profile(kind: str, streams: int, loop: str | None) -> None:
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    upstream = Server(["-m", "bench.upstream", "--pace", "0.02", "--tokens", "200"])
    args = ["-m", "bench.subject", kind, "--upstream", upstream.url]
    if loop:
        event_loop, _, http = loop.partition("+")
        args += ["--loop", event_loop] + (["--http", http] if http else [])
    ahead = streams <= AHEAD_UP_TO_STREAMS  # as the suite runs it (bench/run.py)
    relay = Server(args, log=RESULTS / "logs" / f"profile-{kind}.log", subject=ahead)
    body = FN_CHAT if kind == "function" else chat_body()
    out = RESULTS / f"profile-{kind}-{streams}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        await run_streams(relay.url, body, 5)
        recorder = subprocess.Popen(  # noqa: S603, ASYNC220 - py-spy on our child, at start
            [spy, "record", "-r", "500", "-f", "raw", "-o", str(out), "-p", str(relay.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1)  # py-spy attaches (bench pacing)
        cpu0 = cpu_seconds(relay.pid)
        results = await run_streams(relay.url, body, streams, stagger=1.0)
        cpu = cpu_seconds(relay.pid) - cpu0
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(30)
    finally:
        relay.stop()
        upstream.stop()
    errors = sum(not r.ok for r in results)
    print(f"{kind}, {streams} paced streams: {cpu / (streams * 200) * 1e5:.2f} CPU s / 100k events")
    print(f"errors: {errors}; raw stacks: {out.relative_to(ROOT)}")
    print("\n".join(summarise(out.read_text())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="py-spy on a relay under paced streams")
    parser.add_argument("kind", choices=("function", "passthrough"))
    parser.add_argument("streams", type=int, nargs="?", default=300)
    parser.add_argument("--loop", default=None, help="e.g. uvloop+httptools")
    args = parser.parse_args(argv)
    raise_fd_limit()
    fast_loop_policy()
    asyncio.run(profile(args.kind, args.streams, args.loop))
    sys.exit(0)


if __name__ == "__main__":
    main()
