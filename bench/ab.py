"""A/B: the function from another tree against this one, with the pass-through, in one run.

    git archive <commit> | tar -x -C /tmp/base      # the tree before the change
    .venv/bin/python -m bench.ab /tmp/base --streams 100 --rounds 4 [--query ?format=ui]
        [--body chat|prompt] [--shape text|reasoning|tools] [--unpaced 2000 --streams 8]

Every round starts a fresh relay process per subject (the pass-through, the function from
``base``, the function from this tree), the order rotating per round, and runs ``streams``
paced streams (20 ms apart, 200 events, starts spread over 1 s) against each; CPU comes from
/proc for the relay alone. Up to 100 streams the relays run ahead of the bench's own processes,
as the suite's do (``AHEAD_UP_TO_STREAMS`` in bench/run.py; ``BENCH_SUBJECT_NICE=0``: as
equals). Prints each subject's CPU per 100k upstream events and memory per stream (median
[range]), and the paired ratios per round: head / base, head / pass-through, base /
pass-through. How each change in docs/performance.md was measured (issue 15).

``--unpaced TOKENS``: streams of TOKENS events with no delay, all started at once, from an
upstream that replays its replies from memory (bench/upstream.py, ``--replay``), so that the
relays, not the upstream, are the limit; the relays run as equals (each needs a whole core).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench.client import run_streams, stream_once
from bench.procs import (
    ROOT,
    Server,
    cpu_seconds,
    fast_loop_policy,
    kernel_counts,
    raise_fd_limit,
    rss_bytes,
)
from bench.run import (
    AHEAD_UP_TO_STREAMS,
    FN_CHAT,
    FN_PROMPT,
    RESULTS,
    SHAPES,
    chat_body,
    fn_chat,
    upstream_events,
)


async def _run(
    root: Path,
    kind: str,
    upstream: str,
    url_query: str,
    body: bytes,
    streams: int,
    events: int,
    paced: bool = True,
) -> dict[str, float]:
    relay = Server(
        ["-m", "bench.subject", kind, "--upstream", upstream],
        log=RESULTS / "logs" / f"ab-{kind}.log",
        root=root,
        subject=paced and streams <= AHEAD_UP_TO_STREAMS,
    )
    try:
        url = relay.url + url_query
        await stream_once(url, body, limit=0.5)
        base = rss_bytes(relay.pid)
        peak = base
        cpu0 = cpu_seconds(relay.pid)
        kernel0 = kernel_counts(relay.pid)
        stagger = 1.0 if paced else 0.0
        task = asyncio.create_task(run_streams(url, body, streams, stagger=stagger))
        while not task.done():
            peak = max(peak, rss_bytes(relay.pid))
            await asyncio.sleep(0.05)  # sampling the relay's memory (bench pacing)
        results = task.result()
        cpu = cpu_seconds(relay.pid) - cpu0
        kernel = {k: v - kernel0[k] for k, v in kernel_counts(relay.pid).items()}
    finally:
        relay.stop()
    errors = sum(not r.ok for r in results)
    total = streams * events
    return {
        "cpu": cpu / total * 1e5,
        "user": kernel["user"] / total * 1e5,
        "system": kernel["system"] / total * 1e5,
        "faults": kernel["minflt"] / total * 1e3,
        "switches": (kernel["voluntary"] + kernel["involuntary"]) / total * 1e3,
        "preempted": kernel["involuntary"] / total * 1e3,
        "rss": (peak - base) / streams / 1024,
        "errors": float(errors),
    }


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}..{max(values):.3f}]"


async def ab(args: argparse.Namespace) -> None:
    paced = args.unpaced is None
    tokens = 200 if paced else args.unpaced
    pacing = ["--pace", "0.02"] if paced else ["--pace", "0", "--replay"]
    upstream = Server(
        ["-m", "bench.upstream", *pacing, "--tokens", str(tokens)],
        log=RESULTS / "logs" / "ab-upstream.log",
    )
    extra = SHAPES.get(args.shape, {})
    fn_body = FN_PROMPT if args.body == "prompt" else (fn_chat(**extra) if extra else FN_CHAT)
    events = upstream_events(args.shape, tokens)
    subjects = [
        ("passthrough", ROOT, "passthrough", "", chat_body(**extra)),
        ("base", Path(args.base), "function", args.query, fn_body),
        ("head", Path(args.head), "function", args.query, fn_body),
    ]
    for spec in args.variant:
        name, _, tree = spec.partition("=")
        subjects.append((name, Path(tree), "function", args.query, fn_body))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in subjects}
    try:
        for rnd in range(args.rounds):
            shift = rnd % len(subjects)
            for name, root, kind, query, body in subjects[shift:] + subjects[:shift]:
                up = upstream.url
                result = await _run(root, kind, up, query, body, args.streams, events, paced)
                runs[name].append(result)
            last = {name: f"{r[-1]['cpu']:.2f}" for name, r in runs.items() if r}
            print(f"round {rnd + 1}: CPU s/100k {last}", flush=True)
    finally:
        upstream.stop()
    print(
        f"{args.streams} {'paced' if paced else 'unpaced'} streams of {tokens} tokens, "
        f"{args.rounds} rounds, query {args.query!r}, "
        f"body {args.body}, shape {args.shape}"
    )
    for name, r in runs.items():
        errors = sum(x["errors"] for x in r)
        print(
            f"  {name:12} CPU s/100k {_fmt([x['cpu'] for x in r])}  "
            f"KiB/stream {_fmt([x['rss'] for x in r])}  errors {errors:g}"
        )
        print(
            f"  {'':12} user {_fmt([x['user'] for x in r])}  system "
            f"{_fmt([x['system'] for x in r])}  (s/100k); per 1k events: faults "
            f"{_fmt([x['faults'] for x in r])}  context switches "
            f"{_fmt([x['switches'] for x in r])} (involuntary {_fmt([x['preempted'] for x in r])})"
        )
    others = [name for name, *_ in subjects if name not in ("passthrough", "base")]
    pairs = [(name, "base") for name in others] + [(name, "passthrough") for name in others]
    for a, b in [*pairs, ("base", "passthrough")]:
        for metric in ("cpu", "user", "system", "rss"):
            ratios = [
                x[metric] / y[metric]
                for x, y in zip(runs[a], runs[b], strict=True)
                if y[metric] > 0
            ]
            if ratios:
                print(f"  {metric} {a}/{b}: {_fmt(ratios)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A/B the function of two trees, paced or unpaced")
    parser.add_argument("base", help="the other tree (e.g. git archive of the commit before)")
    parser.add_argument("--head", default=str(ROOT), help="the tree to compare (default: this)")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=DIR: one more tree to compare"
    )
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--query", default="", help="e.g. ?format=ui")
    parser.add_argument("--body", choices=("chat", "prompt"), default="chat")
    parser.add_argument("--shape", choices=("text", *SHAPES), default="text")
    parser.add_argument(
        "--unpaced", type=int, metavar="TOKENS", help="unpaced streams of TOKENS events each"
    )
    args = parser.parse_args(argv)
    args.base, args.head = (str(Path(p).resolve()) for p in (args.base, args.head))
    specs = (v.partition("=") for v in args.variant)
    args.variant = [f"{name}={Path(tree).resolve()}" for name, _, tree in specs]
    raise_fd_limit()
    fast_loop_policy()
    t0 = time.monotonic()
    asyncio.run(ab(args))
    print(f"{time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
