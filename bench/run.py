"""The benchmark suite: W1 latency, W2 throughput and CPU, W3 concurrency at real pacing, W4
cold start, W5 a new request on a busy instance, W6 every output format at real pacing.

    .venv/bin/python -m bench            # the whole suite (a few minutes)
    .venv/bin/python -m bench --quick    # the same machinery at small scale (about half a minute)

Three subjects stream from the same demo upstream (bench/upstream.py, its own process): *direct*
(the client talks to the upstream: the physical limit), *pass-through* (bench/passthrough.py: the
limit for Python) and *function* (api/generate.py); both relays run in processes of their own
under the runtime's uvicorn (bench/subject.py), so their CPU time and memory come from /proc.
The client (bench/client.py) runs here. Within a round the subjects take turns, and the order
rotates from round to round, so that the machine's drift hits them alike; each figure is the
median over rounds with its min and max, and "added" means minus direct in the same round.
W4 runs bench/cold_start.py and bench/cold_start_bundle.py (the real builder: `make deps-vercel`).
Results go to bench/results/.
``--loop uvloop+httptools`` (or any of the loop / parser pairs) forces what the relays run on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import StreamResult, run_streams, stream_once
from bench.procs import (
    ROOT,
    SUBJECT_NICE,
    Server,
    cpu_seconds,
    fast_loop_policy,
    raise_fd_limit,
    rss_bytes,
    subjects_prioritized,
)
from bench.subject import BENCH_KEY
from bench.upstream import tool_arguments_of
from dev.demo_upstream import tokenize

RESULTS = ROOT / "bench" / "results"
PROMPT = "Say hello to the bench."
MS = 1000.0


@dataclass(frozen=True)
class Scale:
    """How big each workload is; ``--quick`` and the smoke test shrink it."""

    rounds: int = 5
    w1_ttfb_samples: int = 10
    w1_tokens: int = 200
    w1_pace: float = 0.02
    w2_rounds: int = 5
    w2_streams: int = 8
    w2_tokens: int = 2000
    w3_rounds: int = 3
    w3_levels: tuple[int, ...] = (100, 500, 1000)
    w3_tokens: int = 200
    w3_pace: float = 0.02
    w3_stagger: float = 1.0
    w4_runs: int = 7
    w4_bundle_runs: int = 15  # a deployed cold start moves by a fifth between rounds
    w5_rounds: int = 5
    w5_samples: int = 10
    w6_rounds: int = 5  # the formats sit near their line: 3 rounds moved by 0.2x between runs
    w6_streams: int = 100


FULL = Scale()
QUICK = Scale(
    rounds=3,
    w1_tokens=50,
    w2_rounds=3,
    w2_tokens=500,
    w3_rounds=1,
    w3_levels=(100,),
    w3_tokens=50,
    w3_stagger=0.2,
    w4_runs=3,
    w4_bundle_runs=3,
    w5_rounds=3,
    w5_samples=5,
    w6_rounds=1,
    w6_streams=50,
)


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max (NaN-free; None when there is nothing to summarise)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def ratio(ours: float | None, base: float | None) -> float | None:
    if ours is None or base is None or base <= 0:
        return None
    return round(ours / base, 2)


def shape_variants(formats: dict[str, bool]) -> list[Variant]:
    """Each stream shape (reasoning, tool calls) as a pass-through and as the function's chat and
    ``ui`` output, each function variant paired with the pass-through of the same shape."""
    out = []
    for shape, extra in SHAPES.items():
        base = f"passthrough {shape}"
        out.append(Variant(base, "passthrough", body=chat_body(**extra), shape=shape))
        body = fn_chat(**extra)
        out.append(Variant(f"function chat {shape}", "function", "", body, shape, base))
        if formats["ui"]:
            name = f"function ui {shape}"
            out.append(Variant(name, "function", "?format=ui", body, shape, base))
    return out


def chat_body(**extra: Any) -> bytes:
    """What an OpenAI-style client sends direct (and what the pass-through forwards): the same
    upstream request our function builds (usage asked for, as ours does for its own logs)."""
    return json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 4096,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
    ).encode()


BENCH_TOOL = {
    "type": "function",
    "function": {
        "name": "echo",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}
# The W2 shapes beyond text (issue 12): a thinking phase as long as the reply, or a tool call
# whose arguments stream in as many fragments (bench/upstream.py).
SHAPES: dict[str, dict[str, Any]] = {
    "reasoning": {"reasoning_effort": "low"},
    "tools": {"tools": [BENCH_TOOL], "tool_choice": "required"},
}
FN_CHAT = json.dumps({"messages": [{"role": "user", "content": PROMPT}]}).encode()
FN_PROMPT = json.dumps({"prompt": PROMPT}).encode()


def fn_chat(**extra: Any) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": PROMPT}], **extra}).encode()


def upstream_events(shape: str, tokens: int) -> int:
    """Events the demo upstream streams per request for a W2 shape, besides the framing."""
    if shape == "reasoning":
        return 2 * tokens
    if shape == "tools":
        return len(tokenize(tool_arguments_of(tokens))) + 1
    return tokens


# Paced runs of up to this many streams start their relay ahead of the bench's own processes
# (bench/procs.py, SUBJECT_NICE): there a relay needs about a third of a core, as on an instance
# of its own, and the co-scheduled upstream and client only preempt it. Past it (W3 at 500 and
# 1,000 streams) and in the unpaced workloads (W2, W5) a relay saturates its core and the
# machine is the limit: a relay ahead of them would starve the upstream and the clients (on
# time at 1,000 streams 0.69x direct reading's, W5's pass-through first byte 280 ms against 160
# while its upstream still made every reply afresh;
# docs/performance.md, tenth pass), so there they share the cores as equals.
AHEAD_UP_TO_STREAMS = 100


class Subjects:
    """The upstream and both relays for one workload; relays can be restarted fresh."""

    def __init__(
        self, pace: float, tokens: int, loop: str | None, logs: Path, *, replay: bool = False
    ) -> None:
        """``replay``: the upstream serves its unpaced replies from memory (bench/upstream.py)."""
        self._loop, _, self._http = (loop or "").partition("+")
        self._logs = logs
        flags = ["--replay"] if replay else []
        self.upstream = Server(
            ["-m", "bench.upstream", "--pace", str(pace), "--tokens", str(tokens), *flags],
            log=logs / "upstream.log",
        )
        self.relays: dict[str, Server] = {}
        for kind in ("passthrough", "function"):
            self.start(kind)

    def start(self, kind: str, *, ahead: bool = False) -> Server:
        """A fresh relay; ``ahead``: run ahead of the bench's processes (AHEAD_UP_TO_STREAMS)."""
        old = self.relays.pop(kind, None)
        if old is not None:
            old.stop()
        args = ["-m", "bench.subject", kind, "--upstream", self.upstream.url]
        if self._loop:
            args += ["--loop", self._loop]
        if self._http:
            args += ["--http", self._http]
        server = Server(args, log=self._logs / f"{kind}.log", subject=ahead)
        self.relays[kind] = server
        return server

    @property
    def direct_url(self) -> str:
        return self.upstream.url + "/chat/completions"

    def url(self, kind: str) -> str:
        return self.direct_url if kind == "direct" else self.relays[kind].url

    def body(self, kind: str) -> bytes:
        return FN_CHAT if kind == "function" else chat_body()

    def stop(self) -> None:
        for server in self.relays.values():
            server.stop()
        self.upstream.stop()


def rotated[T](items: list[T], shift: int) -> list[T]:
    shift %= len(items)
    return items[shift:] + items[:shift]


async def warm(subjects: Subjects) -> None:
    """One short request per relay: imports, the shared session and its pool get going."""
    for kind in ("passthrough", "function"):
        await stream_once(subjects.url(kind), subjects.body(kind), limit=0.5)


# -- W1: latency ----------------------------------------------------------------------------


def _w1_sample(r: StreamResult, firsts: list[StreamResult]) -> dict[str, float]:
    """One round of one subject: the full stream's p99 gap, and the median time to first
    byte and event over it and the extra requests that hung up after their first event."""
    nan = math.nan
    every = [r, *firsts]
    ttfb = [(x.first_byte_at - x.sent_at) * MS for x in every if x.first_byte_at]
    ttfe = [(x.first_event_at - x.sent_at) * MS for x in every if x.first_event_at]
    return {
        "ttfb": statistics.median(ttfb) if ttfb else nan,
        "ttfe": statistics.median(ttfe) if ttfe else nan,
        "p99_gap": percentile(r.gaps(), 0.99) * MS,
    }


async def w1(scale: Scale, loop: str | None, logs: Path) -> dict[str, Any]:
    """One stream at a time: time to first byte and event, p99 gap; added = minus direct."""
    subjects = Subjects(scale.w1_pace, scale.w1_tokens, loop, logs)
    kinds = ["direct", "passthrough", "function"]
    raw: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    errors = dict.fromkeys(kinds, 0)
    try:
        await warm(subjects)
        for rnd in range(scale.rounds):
            for kind in rotated(kinds, rnd):
                url, body = subjects.url(kind), subjects.body(kind)
                result = await stream_once(url, body)
                errors[kind] += not (result.ok and result.done)
                firsts = []
                for _ in range(scale.w1_ttfb_samples):
                    firsts.append(await stream_once(url, body, first_only=True))
                    await asyncio.sleep(0.01)  # let the relay finish with the hang-up
                raw[kind].append(_w1_sample(result, firsts))
    finally:
        subjects.stop()
    out: dict[str, Any] = {
        "tokens": scale.w1_tokens,
        "pace_ms": scale.w1_pace * MS,
        "ttfb_samples_per_round": 1 + scale.w1_ttfb_samples,
    }
    for kind in kinds:
        row: dict[str, Any] = {"errors": errors[kind]}
        for metric in ("ttfb", "ttfe", "p99_gap"):
            row[f"{metric}_ms"] = summary([s[metric] for s in raw[kind]])
            if kind != "direct":
                added = [
                    s[metric] - d[metric] for s, d in zip(raw[kind], raw["direct"], strict=True)
                ]
                row[f"added_{metric}_ms"] = summary(added)
        out[kind] = row
    fn, pt = out["function"], out["passthrough"]
    out["ratios"] = {
        "added_ttfb_vs_passthrough": ratio(
            fn["added_ttfb_ms"]["median"], pt["added_ttfb_ms"]["median"]
        ),
        "added_ttfe_vs_passthrough": ratio(
            fn["added_ttfe_ms"]["median"], pt["added_ttfe_ms"]["median"]
        ),
    }
    return out


# -- W2: throughput and CPU -----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # direct, passthrough, function
    query: str = ""
    body: bytes = b""
    shape: str = "text"  # text, reasoning, tools: what the upstream streams for this body
    baseline: str = "passthrough"  # the pass-through variant its CPU is compared with


async def detect_formats(subjects: Subjects) -> dict[str, bool]:
    """Whether the function knows ``?format=ui`` and ``?format=text`` (issue 4): a UI message
    stream announces itself with its header, a text stream with text/plain."""
    found = {}
    for name, check in (
        ("ui", lambda h: b"x-vercel-ai-ui-message-stream" in h),
        ("text", lambda h: h.get(b"content-type", b"").startswith(b"text/plain")),
    ):
        result = await stream_once(f"{subjects.url('function')}?format={name}", FN_PROMPT, 0.5)
        found[name] = result.status == 200 and check(result.headers)
    return found


def upstream_events_of(variant: Variant, scale: Scale) -> int:
    return upstream_events(variant.shape, scale.w2_tokens)


async def w2(scale: Scale, loop: str | None, logs: Path) -> dict[str, Any]:
    """8 streams at once, no pacing: events per second and relay CPU per 100k events."""
    subjects = Subjects(0.0, scale.w2_tokens, loop, logs)
    try:
        await warm(subjects)
        formats = await detect_formats(subjects)
        variants = [
            Variant("direct", "direct", body=chat_body()),
            Variant("passthrough", "passthrough", body=chat_body()),
            Variant("function chat", "function", body=FN_CHAT),
            Variant("function prompt->completion", "function", body=FN_PROMPT),
        ]
        skipped = []
        for name in ("ui", "text"):
            if formats[name]:
                variants.append(
                    Variant(f"function {name}", "function", f"?format={name}", FN_PROMPT)
                )
            else:
                skipped.append(f"function {name}: ?format={name} not supported by this build")
        variants += shape_variants(formats)
        samples: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        errors = {v.name: 0 for v in variants}
        for rnd in range(scale.w2_rounds):
            for variant in rotated(variants, rnd):
                pid = None if variant.kind == "direct" else subjects.relays[variant.kind].pid
                url = subjects.url(variant.kind) + variant.query
                cpu0 = cpu_seconds(pid) if pid else 0.0
                t0 = time.monotonic()
                results = await run_streams(url, variant.body, scale.w2_streams)
                wall = time.monotonic() - t0
                cpu = cpu_seconds(pid) - cpu0 if pid else math.nan
                upstream_events = scale.w2_streams * upstream_events_of(variant, scale)
                errors[variant.name] += sum(not r.ok for r in results)
                samples[variant.name].append(
                    {
                        "events_per_s": upstream_events / wall,
                        "cpu_s_per_100k": cpu / upstream_events * 100_000,
                        "client_events": sum(len(r.event_times) for r in results),
                    }
                )
    finally:
        subjects.stop()
    out: dict[str, Any] = {
        "streams": scale.w2_streams,
        "tokens": scale.w2_tokens,
        "skipped": skipped,
        "note": "events = upstream content, reasoning or tool-argument events; CPU = relay "
        "process user+sys from /proc",
    }
    for variant in variants:
        rows = samples[variant.name]
        out[variant.name] = {
            "errors": errors[variant.name],
            "events_per_s": summary([s["events_per_s"] for s in rows], 0),
            "cpu_s_per_100k": summary([s["cpu_s_per_100k"] for s in rows]),
            "client_events_per_stream": rows[0]["client_events"] / scale.w2_streams,
        }
    # Each round's ratio to the pass-through of the same round (and the same shape of stream),
    # then the median: paired, so that drift between rounds cancels.
    out["ratios"] = {}
    out["ratio_ranges"] = {}
    for v in variants:
        if v.kind != "function":
            continue
        base = [s["cpu_s_per_100k"] for s in samples[v.baseline]]
        # A round whose pass-through read no CPU at all (10 ms ticks, a tiny run) has no ratio.
        pairs = zip(samples[v.name], base, strict=True)
        paired = [r for s, b in pairs if (r := ratio(s["cpu_s_per_100k"], b)) is not None]
        out["ratios"][f"{v.name} cpu_vs_passthrough"] = (
            round(statistics.median(paired), 2) if paired else None
        )
        out["ratio_ranges"][f"{v.name} cpu_vs_passthrough"] = summary(paired, 2)
        rates = zip(samples[v.name], samples[v.baseline], strict=True)
        out["ratio_ranges"][f"{v.name} events_per_s_vs_passthrough"] = summary(
            [r for s, b in rates if (r := ratio(s["events_per_s"], b["events_per_s"]))], 2
        )
    return out


# -- W3: concurrency ------------------------------------------------------------------------


async def _sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def w3(scale: Scale, loop: str | None, logs: Path) -> dict[str, Any]:
    """N paced streams at once in one relay process (fresh for every run, so memory is its own).

    Besides each subject's own figures, every round gives paired ratios (issue 15): the
    function's CPU per event, p99 gap and memory per stream over the pass-through's of the same
    round, and each relay's delivered events per second over direct reading's: 1.0 when every
    event arrived on its schedule, lower when the relay fell behind the pacing."""
    subjects = Subjects(scale.w3_pace, scale.w3_tokens, loop, logs)
    kinds = ["direct", "passthrough", "function"]
    variants = {
        "direct": Variant("direct", "direct", body=chat_body()),
        "passthrough": Variant("passthrough", "passthrough", body=chat_body()),
        "function": Variant("function", "function", body=FN_CHAT),
    }
    out: dict[str, Any] = {
        "tokens": scale.w3_tokens,
        "pace_ms": scale.w3_pace * MS,
        "stagger_s": scale.w3_stagger,
    }
    try:
        for level in scale.w3_levels:
            raw: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
            for rnd in range(scale.w3_rounds):
                for kind in rotated(kinds, rnd):
                    run = await _paced_run(subjects, variants[kind], level, scale)
                    raw[kind].append(run)
            row: dict[str, Any] = {kind: _paced_entry(raw[kind], raw["direct"]) for kind in kinds}
            row["ratios"] = _paced_ratios(raw["function"], raw["passthrough"], raw["direct"])
            out[str(level)] = row
    finally:
        subjects.stop()
    return out


def _paired(
    ours: list[dict[str, float]], base: list[dict[str, float]], metric: str
) -> dict[str, Any]:
    """Round-by-round ratio of one metric, summarised (median and range)."""
    pairs = zip(ours, base, strict=True)
    return summary([r for a, b in pairs if (r := ratio(a[metric], b[metric])) is not None], 2)


def _paced_entry(runs: list[dict[str, float]], direct: list[dict[str, float]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "errors": summary([r["errors"] for r in runs], 0),
        "p99_gap_ms": summary([r["p99_gap"] for r in runs]),
        "p99_ttfb_ms": summary([r["p99_ttfb"] for r in runs]),
        "events_per_s": summary([r["events_per_s"] for r in runs], 0),
        "on_time_vs_direct": _paired(runs, direct, "events_per_s"),
        "on_time_vs_schedule": summary([r["on_time_vs_schedule"] for r in runs], 2),
    }
    if runs and runs[0]["pid"]:
        added = [r["p99_gap"] - d["p99_gap"] for r, d in zip(runs, direct, strict=True)]
        entry["added_p99_gap_ms"] = summary(added)
        entry["rss_per_stream_kib"] = summary([r["rss_per_stream"] for r in runs], 1)
        entry["rss_peak_mib"] = summary([r["rss_peak"] for r in runs], 1)
        entry["cpu_s_per_100k"] = summary([r["cpu_s_per_100k"] for r in runs])
        entry["cpu_share_of_a_core"] = summary([r["cpu_share"] for r in runs], 2)
    return entry


def _paced_ratios(
    fn: list[dict[str, float]], pt: list[dict[str, float]], direct: list[dict[str, float]]
) -> dict[str, Any]:
    return {
        "cpu_vs_passthrough": _paired(fn, pt, "cpu_s_per_100k"),
        "p99_gap_vs_passthrough": _paired(fn, pt, "p99_gap"),
        "rss_per_stream_vs_passthrough": _paired(fn, pt, "rss_per_stream"),
        "function_on_time_vs_direct": _paired(fn, direct, "events_per_s"),
        "passthrough_on_time_vs_direct": _paired(pt, direct, "events_per_s"),
    }


async def _paced_run(
    subjects: Subjects, variant: Variant, level: int, scale: Scale
) -> dict[str, float]:
    """``level`` paced streams of one variant against a freshly started relay."""
    pid = None
    kind = variant.kind
    if kind != "direct":
        pid = subjects.start(kind, ahead=level <= AHEAD_UP_TO_STREAMS).pid
    url = subjects.url(kind) + variant.query
    if pid:
        await stream_once(url, variant.body, limit=0.5)
    base = rss_bytes(pid) if pid else 0
    cpu0 = cpu_seconds(pid) if pid else 0.0
    peak = [base]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, peak, stop)) if pid else None
    t0 = time.monotonic()
    results = await run_streams(url, variant.body, level, stagger=scale.w3_stagger)
    wall = time.monotonic() - t0
    stop.set()
    if sampler is not None:
        await sampler
    cpu = cpu_seconds(pid) - cpu0 if pid else math.nan
    events = level * upstream_events(variant.shape, scale.w3_tokens)
    gaps = [g for r in results for g in r.gaps()]
    ttfb = [r.first_byte_at - r.sent_at for r in results if r.first_byte_at]
    # Delivered rate: the upstream's events over the time from the first request sent to the
    # last event read. Direct reading sets the schedule; a relay that falls behind stretches it.
    ends = [r.event_times[-1] for r in results if r.event_times]
    span = (max(ends) - min(r.sent_at for r in results)) if ends else math.nan
    sse = variant.query != "?format=text"
    return {
        "pid": float(pid or 0),
        "errors": sum(not (r.ok and (r.done or not sse)) for r in results),
        "p99_gap": percentile(gaps, 0.99) * MS,
        "p99_ttfb": percentile(ttfb, 0.99) * MS,
        "events_per_s": events / span if span and span > 0 else math.nan,
        "on_time_vs_schedule": (scale.w3_stagger + scale.w3_tokens * scale.w3_pace) / span
        if span and span > 0
        else math.nan,
        "rss_per_stream": (peak[0] - base) / level / 1024,
        "rss_peak": peak[0] / 2**20,
        "cpu_s_per_100k": cpu / events * 100_000,
        "cpu_share": cpu / wall,
    }


# -- W5: a new request while the instance is busy ------------------------------------------


async def w5(scale: Scale, loop: str | None, logs: Path) -> dict[str, Any]:
    """Time to first byte of a new request while ``w2_streams`` unpaced streams run in the same
    relay (each restarted as soon as it ends, so the load lasts as long as the samples do).
    The relays take turns, the order rotating per round; the ratio is paired per round.

    The upstream replays its replies from memory and answers a new request at once, as a real
    provider does: made afresh, the 8 streams kept it busy enough that a new request waited
    about 150 ms for it to start, which was nearly all of either relay's first byte."""
    subjects = Subjects(0.0, scale.w2_tokens, loop, logs, replay=True)
    kinds = ["passthrough", "function"]
    raw: dict[str, list[float]] = {k: [] for k in kinds}
    errors = dict.fromkeys(kinds, 0)
    try:
        await warm(subjects)
        for rnd in range(scale.w5_rounds):
            for kind in rotated(kinds, rnd):
                ttfb, failed = await _busy_first_bytes(subjects, kind, scale)
                raw[kind].append(statistics.median(ttfb) if ttfb else math.nan)
                errors[kind] += failed
    finally:
        subjects.stop()
    out: dict[str, Any] = {
        "busy_streams": scale.w2_streams,
        "tokens": scale.w2_tokens,
        "samples_per_round": scale.w5_samples,
    }
    for kind in kinds:
        out[kind] = {"errors": errors[kind], "ttfb_ms": summary(raw[kind])}
    pairs = zip(raw["function"], raw["passthrough"], strict=True)
    paired = [r for f, p in pairs if (r := ratio(f, p)) is not None]
    out["ratios"] = {"ttfb_vs_passthrough": summary(paired, 2)}
    return out


async def _busy_first_bytes(subjects: Subjects, kind: str, scale: Scale) -> tuple[list[float], int]:
    """Probe the first byte of new requests while a client process of its own keeps the relay
    busy (in this process its parsing of the load would delay the probe's own timestamps)."""
    url, body = subjects.url(kind), subjects.body(kind)
    ttfb: list[float] = []
    failed = 0
    busy = ["-m", "bench.client", url, "--busy", str(scale.w2_streams), "--body", body.decode()]
    with Server(busy):
        await asyncio.sleep(0.2)  # the load gets going (bench pacing, not a test)
        for _ in range(scale.w5_samples):
            result = await stream_once(url, body, first_only=True)
            failed += result.first_byte_at is None
            if result.first_byte_at is not None:
                ttfb.append((result.first_byte_at - result.sent_at) * MS)
            await asyncio.sleep(0.01)
    return ttfb, failed


# -- W6: every output format at real pacing -------------------------------------------------


def paced_variants(formats: dict[str, bool]) -> list[Variant]:
    """The W2 variants, paced: each format and each stream shape against the same-shape
    pass-through."""
    variants = [
        Variant("passthrough", "passthrough", body=chat_body()),
        Variant("function chat", "function", body=FN_CHAT),
        Variant("function prompt->completion", "function", body=FN_PROMPT),
    ]
    for name in ("ui", "text"):
        if formats[name]:
            variants.append(Variant(f"function {name}", "function", f"?format={name}", FN_PROMPT))
    return variants + shape_variants(formats)


async def w6(scale: Scale, loop: str | None, logs: Path) -> dict[str, Any]:
    """``w6_streams`` paced streams of every format and shape: CPU per upstream event and the
    p99 gap. Each function run has a same-shape pass-through run of its own, right before or
    after it (the order alternating), and is compared with that one: a round of W6 takes about
    two minutes, and the machine's drift over a round moved the cells by up to 0.2x when one
    pass-through run per round stood for all of them."""
    subjects = Subjects(scale.w3_pace, scale.w3_tokens, loop, logs)
    try:
        await warm(subjects)
        variants = paced_variants(await detect_formats(subjects))
        by_name = {v.name: v for v in variants}
        functions = [v for v in variants if v.kind == "function"]
        raw: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        beside: dict[str, list[dict[str, float]]] = {v.name: [] for v in functions}
        for rnd in range(scale.w6_rounds):
            for index, variant in enumerate(rotated(functions, rnd)):
                base = by_name[variant.baseline]
                pair = (variant, base) if (rnd + index) % 2 == 0 else (base, variant)
                for subject in pair:
                    run = await _paced_run(subjects, subject, scale.w6_streams, scale)
                    raw[subject.name].append(run)
                    if subject is base:
                        beside[variant.name].append(run)
    finally:
        subjects.stop()
    out: dict[str, Any] = {
        "streams": scale.w6_streams,
        "tokens": scale.w3_tokens,
        "pace_ms": scale.w3_pace * MS,
    }
    for v in variants:
        runs = raw[v.name]
        row: dict[str, Any] = {
            "errors": summary([r["errors"] for r in runs], 0),
            "cpu_s_per_100k": summary([r["cpu_s_per_100k"] for r in runs]),
            "p99_gap_ms": summary([r["p99_gap"] for r in runs]),
        }
        if v.kind == "function":
            row["cpu_vs_passthrough"] = _paired(runs, beside[v.name], "cpu_s_per_100k")
            row["p99_gap_vs_passthrough"] = _paired(runs, beside[v.name], "p99_gap")
        out[v.name] = row
    return out


# -- W4: cold start (bench/cold_start.py and bench/cold_start_bundle.py) ---------------------


def _run_script(module: str, runs: int, out_file: Path) -> dict[str, Any]:
    subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-m", module, "--runs", str(runs), "--out", str(out_file)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    data: dict[str, Any] = json.loads(out_file.read_text())
    return data


def w4(scale: Scale) -> dict[str, Any]:
    """The cold start twice: from the project tree (bench/cold_start.py: the import, and the
    spawn under Vercel's runtime) and as deployed (bench/cold_start_bundle.py: the real
    builder's bundles, by default and with bytecode). Issue 15's target is the deployed one."""
    data = _run_script("bench.cold_start", scale.w4_runs, RESULTS / "cold_start.json")
    spawn = data.get("spawn_to_first_answer_ms_median", {})
    imports = data.get("import_wall_ms_median", {})
    data["ratios"] = {
        "cold_start_vs_bare": ratio(spawn.get("api/generate.py"), spawn.get("bare ASGI app")),
        "import_vs_aiohttp": ratio(imports.get("api.generate"), imports.get("aiohttp alone")),
    }
    data["bundle"] = _run_script(
        "bench.cold_start_bundle", scale.w4_bundle_runs, RESULTS / "cold_start_bundle.json"
    )
    return data


# -- report ---------------------------------------------------------------------------------


def _fmt(s: dict[str, Any] | None, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:g}{unit} [{s['min']:g}..{s['max']:g}]"


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of issue 7 that this run measured."""
    rows: list[tuple[str, str, bool | None]] = []
    if "w1" in results:
        w = results["w1"]
        r = w["ratios"]["added_ttfb_vs_passthrough"]
        rows.append(
            ("W1 added TTFB <= 1.1x pass-through", f"{r}x", None if r is None else r <= 1.1)
        )
        g = w["function"]["added_p99_gap_ms"]["median"]
        rows.append(("W1 added p99 gap < 1 ms", f"{g} ms", g < 1))
    if "w2" in results:
        for name, r in results["w2"]["ratios"].items():
            # Same-shape relaying and every stream of tool calls or reasoning: 1.5x (issue 12).
            beyond_text = any(shape in name for shape in SHAPES)
            limit = 1.5 if name.startswith("function chat ") or beyond_text else 3.0
            rows.append((f"W2 {name} <= {limit}x", f"{r}x", None if r is None else r <= limit))
    if "w3" in results:
        for level, row in results["w3"].items():
            if not level.isdigit():
                continue
            fn = row["function"]
            errs = fn["errors"]["max"]
            rss = fn["rss_per_stream_kib"]["median"]
            rows.append((f"W3 {level} streams: errors == 0", str(errs), errs == 0))
            rows.append((f"W3 {level} streams: RSS/stream <= 64 KiB", f"{rss} KiB", rss <= 64))
            # Issue 15: paired ratios to the pass-through (and to direct reading) of each round.
            r = row["ratios"]
            if int(level) < 1000:
                rows.append(
                    _ratio_row(f"W3 {level} paced: CPU/event", r["cpu_vs_passthrough"], 1.3)
                )
            else:
                on_time = r["function_on_time_vs_direct"]["median"]
                rows.append(
                    (
                        f"W3 {level} paced: on time >= 0.95x direct",
                        f"{on_time}x",
                        None if on_time is None else on_time >= 0.95,
                    )
                )
                rows.append(
                    _ratio_row(f"W3 {level} paced: p99 gap", r["p99_gap_vs_passthrough"], 1.5)
                )
            rows.append(
                _ratio_row(
                    f"W3 {level} paced: RSS/stream", r["rss_per_stream_vs_passthrough"], 1.25
                )
            )
    if "w2" in results:
        key = "function chat events_per_s_vs_passthrough"
        rate = results["w2"]["ratio_ranges"].get(key, {}).get("median")
        rows.append(
            ("W2 unpaced events/s >= 0.8x", f"{rate}x", None if rate is None else rate >= 0.8)
        )
    if "w5" in results:
        rows.append(_ratio_row("W5 busy TTFB", results["w5"]["ratios"]["ttfb_vs_passthrough"], 2.0))
    if "w6" in results:
        for name, row in results["w6"].items():
            if isinstance(row, dict) and "cpu_vs_passthrough" in row:
                rows.append(_ratio_row(f"W6 {name}: CPU/event", row["cpu_vs_passthrough"], 1.3))
    if "w4" in results and "ratios" in results["w4"]:
        for name, limit in (("cold_start_vs_bare", 1.2), ("import_vs_aiohttp", 1.5)):
            r = results["w4"]["ratios"][name]
            rows.append((f"W4 {name} <= {limit}x", f"{r}x", None if r is None else r <= limit))
        for mode in ("default", "bytecode"):
            row = results["w4"]["bundle"][f"ratio, {mode}"]
            per_round = row["per_round"]
            shown = (
                f"{per_round['median']}x [q1 {per_round['q1']}, q3 {per_round['q3']}];"
                f" own modules +{row['added_by_own_import_ms']} ms"
                f" ({row['pass_through_plus_added']}x)"
            )
            name = f"W4 deployed cold start, {mode} <= 1.15x"
            rows.append((name, shown, per_round["median"] <= 1.15))
    return rows


def _ratio_row(name: str, paired: dict[str, Any], limit: float) -> tuple[str, str, bool | None]:
    median = paired.get("median")
    shown = f"{median}x [{paired.get('min')}..{paired.get('max')}]"
    return (f"{name} <= {limit}x", shown, None if median is None else median <= limit)


def report(results: dict[str, Any]) -> str:
    lines = [f"bench on {results['machine']}"]
    nice = results.get("subject_nice", 0)
    lines.append(
        f"relays of paced runs of up to {AHEAD_UP_TO_STREAMS} streams at nice {nice}, ahead of "
        "the bench's upstream and clients; every other run's as their equals"
        if nice
        else "every relay at the same priority as the bench's upstream and clients"
    )
    if "w1" in results:
        w = results["w1"]
        lines.append(f"\nW1 latency: 1 stream, {w['tokens']} tokens {w['pace_ms']:g} ms apart (ms)")
        lines.append(
            f"  {'subject':<13}{'ttfb':>24}{'added ttfb':>24}{'added ttfe':>24}"
            f"{'added p99 gap':>24}"
        )
        for kind in ("direct", "passthrough", "function"):
            row = w[kind]
            lines.append(
                f"  {kind:<13}{_fmt(row['ttfb_ms']):>24}{_fmt(row.get('added_ttfb_ms')):>24}"
                f"{_fmt(row.get('added_ttfe_ms')):>24}{_fmt(row.get('added_p99_gap_ms')):>24}"
            )
    if "w2" in results:
        w = results["w2"]
        lines.append(f"\nW2 throughput: {w['streams']} streams x {w['tokens']} tokens, no delay")
        lines.append(f"  {'subject':<30}{'events/s':>28}{'CPU s / 100k events':>28}{'errors':>8}")
        for name, row in w.items():
            if isinstance(row, dict) and "events_per_s" in row:
                lines.append(
                    f"  {name:<30}{_fmt(row['events_per_s']):>28}"
                    f"{_fmt(row['cpu_s_per_100k']):>28}{row['errors']:>8}"
                )
        lines.extend(f"  skipped: {s}" for s in w["skipped"])
    if "w3" in results:
        w = results["w3"]
        lines.append(
            f"\nW3 concurrency: {w['tokens']} tokens {w['pace_ms']:g} ms apart, "
            f"starts spread over {w['stagger_s']:g} s"
        )
        lines.append(
            f"  {'streams':<8}{'subject':<13}{'errors':>8}{'p99 gap ms':>24}"
            f"{'added p99 gap ms':>24}{'RSS/stream KiB':>22}{'CPU s/100k ev':>22}"
        )
        for level, row in w.items():
            if not level.isdigit():
                continue
            for kind in ("direct", "passthrough", "function"):
                e = row[kind]
                lines.append(
                    f"  {level:<8}{kind:<13}{e['errors']['max']:>8}{_fmt(e['p99_gap_ms']):>24}"
                    f"{_fmt(e.get('added_p99_gap_ms')):>24}{_fmt(e.get('rss_per_stream_kib')):>22}"
                    f"{_fmt(e.get('cpu_s_per_100k')):>22}"
                )
            r = row["ratios"]
            lines.append(
                f"  {level:<8}function / pass-through, paired per round: CPU/event "
                f"{_fmt(r['cpu_vs_passthrough'], 'x')}, p99 gap "
                f"{_fmt(r['p99_gap_vs_passthrough'], 'x')}, RSS/stream "
                f"{_fmt(r['rss_per_stream_vs_passthrough'], 'x')}; on time vs direct: function "
                f"{_fmt(r['function_on_time_vs_direct'], 'x')}, pass-through "
                f"{_fmt(r['passthrough_on_time_vs_direct'], 'x')}; vs the schedule: direct "
                f"{_fmt(row['direct']['on_time_vs_schedule'], 'x')}, function "
                f"{_fmt(row['function']['on_time_vs_schedule'], 'x')}"
            )
    if "w5" in results:
        w = results["w5"]
        lines.append(
            f"\nW5 a new request's time to first byte while {w['busy_streams']} unpaced streams "
            f"run (ms, median of {w['samples_per_round']} per round)"
        )
        for kind in ("passthrough", "function"):
            lines.append(f"  {kind:<13}{_fmt(w[kind]['ttfb_ms']):>28}  errors {w[kind]['errors']}")
        lines.append(
            f"  function / pass-through, paired: {_fmt(w['ratios']['ttfb_vs_passthrough'], 'x')}"
        )
    if "w6" in results:
        w = results["w6"]
        lines.append(
            f"\nW6 every format, paced: {w['streams']} streams x {w['tokens']} tokens "
            f"{w['pace_ms']:g} ms apart"
        )
        lines.append(
            f"  {'subject':<30}{'CPU s / 100k events':>28}{'vs pass-through':>24}{'p99 gap ms':>24}"
        )
        for name, row in w.items():
            if isinstance(row, dict) and "cpu_s_per_100k" in row:
                lines.append(
                    f"  {name:<30}{_fmt(row['cpu_s_per_100k']):>28}"
                    f"{_fmt(row.get('cpu_vs_passthrough'), 'x'):>24}{_fmt(row['p99_gap_ms']):>24}"
                )
    if "w4" in results:
        w = results["w4"]
        lines.append("\nW4 cold start (bench/cold_start.py, bench/cold_start_bundle.py)")
        lines.append(f"  tree, spawn -> first answer ms: {w['spawn_to_first_answer_ms_median']}")
        lines.append(f"  tree, import ms: {w['import_wall_ms_median']}")
        for key, row in w["bundle"].items():
            if "median_ms" in row:
                lines.append(
                    f"  deployed {key}: {row['median_ms']} ms [{row['min_ms']}..{row['max_ms']}],"
                    f" own import {row['own_import_ms']} ms"
                )
    loads = {
        k: v["loadavg_before_after"]
        for k, v in results.items()
        if isinstance(v, dict) and "loadavg_before_after" in v
    }
    lines.append(f"\nload average (1 min) before/after each workload: {loads}")
    lines.append("\nTargets (issues 7 and 15)")
    for name, measured, met in targets(results):
        mark = "n/a" if met is None else ("met" if met else "MISSED")
        lines.append(f"  {mark:<7}{name:<52}{measured}")
    return "\n".join(lines)


async def run_suite(scale: Scale, only: set[str], loop: str | None, logs: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
        "scale": scale.__dict__,
        "subject_loop": loop or "as deployed (requirements.txt)",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("w1", lambda: w1(scale, loop, logs)),
        ("w2", lambda: w2(scale, loop, logs)),
        ("w3", lambda: w3(scale, loop, logs)),
        ("w5", lambda: w5(scale, loop, logs)),
        ("w6", lambda: w6(scale, loop, logs)),
    ]
    for name, step in steps:
        if name in only:
            load_before = _loadavg()
            results[name] = await step()
            # Other work on the machine shows up in every timing; CPU seconds are less exposed.
            results[name]["loadavg_before_after"] = [load_before, _loadavg()]
    if "w4" in only:
        results["w4"] = await asyncio.to_thread(w4, scale)
    # Known only once a relay was started: whether they ran ahead of the bench's own processes.
    results["subject_nice"] = SUBJECT_NICE if subjects_prioritized() else 0
    results["targets"] = [
        {"target": t, "measured": m, "met": met} for t, m, met in targets(results)
    ]
    return results


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="W1-W4 on loopback against the demo upstream")
    parser.add_argument("--quick", action="store_true", help="small scale, for a quick look")
    parser.add_argument("--only", default="w1,w2,w3,w4,w5,w6", help="comma-separated workloads")
    parser.add_argument(
        "--loop",
        choices=[f"{lp}{h}" for lp in ("asyncio", "uvloop") for h in ("", "+h11", "+httptools")],
        default=None,
        help="force the relays' event loop (and HTTP parser: uvloop+httptools)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (JSON)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    fast_loop_policy()
    scale = QUICK if args.quick else FULL
    only = {w.strip().lower() for w in args.only.split(",")}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logs = RESULTS / "logs"
    results = asyncio.run(run_suite(scale, only, args.loop, logs))
    out = args.out or RESULTS / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


__all__ = ["BENCH_KEY", "FULL", "QUICK", "Scale", "main", "run_suite"]
