"""Load and soak on loopback: concurrent streams, random aborts, a mixed-fault soak, long silence.

``python -m bench.soak`` (full size: a few minutes, 90 s of it the silent phase)
prints the figures and writes ``bench/results/soak.json``. ``SOAK_SCALE`` (or ``--scale``)
shrinks every count and the silence; ``tests/test_soak.py`` runs it at a small scale.

Everything is real and in one process: the demo upstream (aiohttp), the function
(``GenerateHandler`` under uvicorn) and the clients (aiohttp), all on 127.0.0.1. Phases:

1. ``concurrent``: N streams at once; every one must be a complete answer. Time to first event.
2. ``aborts``: requests started and aborted at a random point (before the upstream answers,
   before the first token, mid-stream); every upstream request must end within 1 s of the abort.
3. ``soak``: requests with mixed faults (retried 503s and resets, 429 passed through, 400, resets
   and truncation mid-stream, in-band errors, client aborts), each checked against its expected
   outcome; anything else is counted as unexpected.
4. ``silence``: concurrent streams whose first token comes after 90 s, with the default
   keep-alive interval (15 s) and timeouts; keep-alives must flow and nothing may time out.
5. ``burst``: 300 requests at once from 10 clients on two function instances that share a real
   redis-server with the default store settings (pool of 20, 0.5 s timeout), under a request
   rate, a per-client and a global stream limit and a token budget. Every limit must hold
   exactly, no answer may be 503 and no lease may be left once the streams end.
6. ``slow_clients``: sockets that send a request for a 16 MiB answer and never read; every
   stream must end by ``CLIENT_WRITE_TIMEOUT``, its upstream connection closed, its lease freed.

After phases 2 and 3 the upstream connections in use must be 0; then, with the pools closed,
file descriptors and tasks must be back at the baseline taken before the first request, and the
interpreter's allocated blocks close to it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import RedisProcess
from dev.demo_upstream import DemoUpstream, Scenario, start_demo_upstream
from dev.inprocess import serve_asgi
from lib.config import load_settings
from lib.handler import GenerateHandler

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
TEXT = "Soak test reply: one, two, three, four, five, six, seven, eight, nine, ten."
PHASES = ("concurrent", "aborts", "soak", "silence", "burst", "slow_clients")


@dataclass
class Plan:
    """Counts and times of one run; ``scaled`` shrinks them all for the short variant."""

    concurrent: int = 500
    aborts: int = 1000
    requests: int = 10_000
    soak_concurrency: int = 64
    silence: float = 90.0
    silent_streams: int = 5
    burst: int = 300
    slow_clients: int = 20
    write_timeout: float = 2.0
    seed: int = 5

    def scaled(self, scale: float) -> Plan:
        def n(value: int, low: int) -> int:
            return max(low, round(value * scale))

        return Plan(
            concurrent=n(self.concurrent, 5),
            aborts=n(self.aborts, 10),
            requests=n(self.requests, 20),
            soak_concurrency=min(self.soak_concurrency, n(self.requests, 20)),
            silence=max(1.5, self.silence * scale),
            silent_streams=n(self.silent_streams, 1),
            burst=n(self.burst, 30),
            slow_clients=n(self.slow_clients, 2),
            write_timeout=self.write_timeout,
            seed=self.seed,
        )


@dataclass
class Resources:
    fds: int
    tasks: int
    blocks: int
    rss_mb: float

    @staticmethod
    def now() -> Resources:
        gc.collect()
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return Resources(
            fds=len(os.listdir("/proc/self/fd")),
            tasks=len(asyncio.all_tasks()),
            blocks=sys.getallocatedblocks(),
            rss_mb=round(rss / 2**20, 1),
        )


@dataclass
class Report:
    plan: dict[str, Any]
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    unexpected: int = 0


class Rig:
    """The demo upstream, the function under uvicorn, and the means to measure them."""

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self.demo: DemoUpstream
        self.url = ""
        self.base_url = ""
        self.handler: GenerateHandler
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def __aenter__(self) -> Rig:
        self.demo, runner, self.base_url = await start_demo_upstream(pace=0.0)
        self._stops.append(runner.cleanup)
        self.handler, self.url = await self.function()
        return self

    async def function(self, **extra: str) -> tuple[GenerateHandler, str]:
        """Another function instance in front of the same upstream, with ``extra`` settings."""
        env = {
            "OPENAI_API_KEY": "sk-soak-not-a-real-key",
            "OPENAI_BASE_URL": self.base_url,
            "UPSTREAM_MAX_RETRIES": "2",
            "UPSTREAM_RETRY_BASE_DELAY": "0.01",
            "UPSTREAM_RETRY_MAX_DELAY": "1",
            "KEEPALIVE_INTERVAL": str(self.keepalive),
            # As deployed with "maxDuration": 300 (the repository's vercel.json says 60, which
            # would cut a 90 s silent phase at 58 s: see docs/resilience.md).
            "MAX_DURATION": "300",
            **extra,
        }
        handler = GenerateHandler(load_settings(env, root=Path(__file__).parent))
        url, stop = await serve_asgi(handler, backlog=4096, timeout_graceful_shutdown=None)
        self._stops.append(stop)
        return handler, url + "/api/generate"

    async def __aexit__(self, *exc: object) -> None:
        for stop in reversed(self._stops):
            await stop()

    def upstream_connections(self) -> tuple[int, int]:
        """(in use, idle in the pool) of the function's upstream connector."""
        assert self.handler.client is not None
        session = self.handler.client._session
        if session is None or session.closed:
            return 0, 0
        connector: Any = session.connector
        in_use = len(getattr(connector, "_acquired", ()))
        idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
        return in_use, idle

    async def settle(self, baseline: Resources) -> dict[str, Any]:
        """Close the pools (as a cold instance would have none), then compare to the baseline;
        waits at most 5 s for the function to release its upstream connections (a request the
        caller aborted may still be unwinding on a loaded machine) and for the servers to notice
        the closed connections: a leak is what is still there after that."""
        deadline = time.monotonic() + 5
        while True:
            in_use, idle = self.upstream_connections()
            if in_use == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        self.demo.forget()  # the demo's own record of every request is not the function's
        assert self.handler.client is not None
        await self.handler.client.close()
        while True:
            now = Resources.now()
            if (now.fds <= baseline.fds and now.tasks <= baseline.tasks) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.05)
        return {
            "upstream_in_use": in_use,
            "upstream_idle_pooled": idle,
            "fds_over_baseline": now.fds - baseline.fds,
            "tasks_over_baseline": now.tasks - baseline.tasks,
            "blocks_over_baseline": now.blocks - baseline.blocks,
            "rss_mb": now.rss_mb,
        }


def _body(key: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": key}]}).encode()


HEADERS = {"Content-Type": "application/json"}


def _ending(raw: bytes) -> str:
    """'done', 'error' (in-band) or 'cut' (neither: the stream ended without saying why)."""
    events = [e for e in raw.split(b"\n\n") if e and not e.startswith(b":")]
    if not events:
        return "cut"
    if events[-1] == b"data: [DONE]":
        return "done"
    return "error" if b'"error"' in events[-1] else "cut"


# --- phases ---------------------------------------------------------------------------------


async def concurrent_phase(rig: Rig, http: aiohttp.ClientSession, count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for i in range(count):
        rig.demo.push_for(f"c{i}", Scenario(text=TEXT, pace=0.005))
    start = loop.time()
    firsts: list[float] = []

    async def one(i: int) -> str:
        sent = loop.time()
        async with http.post(rig.url, data=_body(f"c{i}"), headers=HEADERS) as resp:
            raw = await resp.content.readany()
            firsts.append(loop.time() - sent)
            raw += await resp.read()
            return _ending(raw) if resp.status == 200 else str(resp.status)

    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(count))))
    wall = loop.time() - start
    firsts.sort()
    return {
        "streams": count,
        "complete": outcomes["done"],
        "outcomes": dict(outcomes),
        "wall_s": round(wall, 2),
        "first_event_ms_p50": round(statistics.median(firsts) * 1000, 1),
        "first_event_ms_p99": round(firsts[int(0.99 * (len(firsts) - 1))] * 1000, 1),
        "unexpected": count - outcomes["done"],
    }


async def abort_phase(rig: Rig, count: int, rng: random.Random) -> dict[str, Any]:
    """Start and abort requests at random points; each upstream request must end within 1 s."""
    kinds = ["before-headers", "before-first-token", "mid-stream", "random-time"]
    phases: Counter[str] = Counter()
    slow_closes = 0
    seen_before = len(rig.demo.seen)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        gate = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            nonlocal slow_closes
            kind = rng.choice(kinds)
            phases[kind] += 1
            key = f"a{i}"
            scenario = {
                "before-headers": Scenario(hang_before_headers=True),
                "before-first-token": Scenario(silence_before_first=30),
                "mid-stream": Scenario(text=TEXT, pace=0.01),
                "random-time": Scenario(text=TEXT, pace=0.002),
            }[kind]
            rig.demo.push_for(key, scenario)
            async with gate:
                task = asyncio.create_task(_read_all(http, rig.url, key))
                if kind == "mid-stream":
                    await asyncio.sleep(rng.uniform(0.02, 0.1))
                elif kind == "random-time":
                    await asyncio.sleep(rng.uniform(0, 0.06))
                else:
                    await asyncio.sleep(rng.uniform(0.005, 0.03))
                task.cancel()  # aiohttp closes the connection of a cancelled request
                aborted = time.monotonic()
                await asyncio.gather(task, return_exceptions=True)
                seen = next((s for s in rig.demo.seen if _key(s) == key), None)
                if seen is not None:
                    try:
                        async with asyncio.timeout(max(0.0, aborted + 1 - time.monotonic())):
                            await seen.finished.wait()
                    except TimeoutError:
                        slow_closes += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return {
        "aborted": count,
        "by_phase": dict(phases),
        "upstream_requests": len(rig.demo.seen) - seen_before,
        "upstream_not_closed_within_1s": slow_closes,
        "unexpected": slow_closes,
    }


def _key(seen: Any) -> str | None:
    try:
        return str(seen.json["messages"][0]["content"])
    except (TypeError, KeyError, IndexError):
        return None


async def _read_all(http: aiohttp.ClientSession, url: str, key: str) -> None:
    async with http.post(url, data=_body(key), headers=HEADERS) as resp:
        await resp.read()


SOAK_MIX: list[tuple[str, int, list[Scenario], str]] = [
    # name, weight, scripted upstream answers, expected outcome at the client
    ("ok", 55, [Scenario(text=TEXT)], "200 done"),
    ("503-then-ok", 8, [Scenario(status=503), Scenario(text=TEXT)], "200 done"),
    ("reset-then-ok", 5, [Scenario(reset_before_headers=True), Scenario(text=TEXT)], "200 done"),
    ("429-long", 5, [Scenario(status=429, headers={"Retry-After": "30"})], "429"),
    ("400", 5, [Scenario(status=400)], "400"),
    ("reset-mid", 5, [Scenario(text=TEXT, after=3, ending="reset")], "200 error"),
    ("eof-mid", 5, [Scenario(text=TEXT, after=3, ending="eof")], "200 error"),
    ("inband-error", 5, [Scenario(text=TEXT, after=3, ending="error")], "200 error"),
    ("crlf-bytewise", 2, [Scenario(text=TEXT, framing="crlf", write="byte")], "200 done"),
    ("client-abort", 5, [Scenario(text=TEXT, pace=0.005)], "aborted"),
]


async def soak_phase(rig: Rig, count: int, concurrency: int, rng: random.Random) -> dict[str, Any]:
    names = [name for name, weight, _, _ in SOAK_MIX for _ in range(weight)]
    table = {name: (scripts, expected) for name, _, scripts, expected in SOAK_MIX}
    tally: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    durations: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    loop = asyncio.get_running_loop()
    start = loop.time()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                name = rng.choice(names)
                scripts, expected = table[name]
                key = f"s{i}"
                rig.demo.push_for(key, *scripts)
                sent = loop.time()
                if expected == "aborted":
                    task = asyncio.create_task(_read_all(http, rig.url, key))
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    got = "aborted"
                else:
                    async with http.post(rig.url, data=_body(key), headers=HEADERS) as resp:
                        raw = await resp.read()
                        got = str(resp.status)
                        if resp.status == 200:
                            got += " " + _ending(raw)
                durations.append(loop.time() - sent)
                tally[name] += 1
                if got != expected:
                    wrong[f"{name}: {got}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = loop.time() - start
    durations.sort()
    return {
        "requests": count,
        "concurrency": concurrency,
        "mix": dict(tally),
        "wall_s": round(wall, 2),
        "requests_per_s": round(count / wall, 1),
        "duration_ms_p50": round(statistics.median(durations) * 1000, 1),
        "duration_ms_p99": round(durations[int(0.99 * (len(durations) - 1))] * 1000, 1),
        "unexpected_outcomes": dict(wrong),
        "unexpected": sum(wrong.values()),
    }


async def silence_phase(rig: Rig, streams: int, silence: float) -> dict[str, Any]:
    async def one(i: int) -> tuple[str, int]:
        key = f"quiet{i}"
        rig.demo.push_for(key, Scenario(text=TEXT, silence_before_first=silence))
        async with (
            aiohttp.ClientSession() as http,
            http.post(rig.url, data=_body(key), headers=HEADERS) as resp,
        ):
            raw = await resp.read()
            return (_ending(raw) if resp.status == 200 else str(resp.status)), raw.count(
                b": keep-alive"
            )

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    pings = [p for _, p in results]
    expected_pings = int(silence / rig.keepalive) - 1
    bad = sum(1 for ending, p in results if ending != "done" or p < expected_pings)
    return {
        "streams": streams,
        "silence_s": silence,
        "keepalive_s": rig.keepalive,
        "complete": sum(1 for ending, _ in results if ending == "done"),
        "keepalives_min": min(pings),
        "unexpected": bad,
    }


class _Lines(logging.Handler):
    """Collects the function's log lines (requests and warnings) during one phase."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.changed.set()

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines if x.startswith('{"event":"request"')]

    async def wait_requests(self, count: int) -> None:
        """Until ``count`` request lines were written (at most 30 s)."""
        async with asyncio.timeout(30):
            while len(self.requests()) < count:
                self.changed.clear()
                await self.changed.wait()


async def burst_phase(rig: Rig, count: int, redis_url: str) -> dict[str, Any]:
    """``count`` requests at once from 10 clients through two instances and one Redis."""
    clients = 10
    per_client = count // clients
    rate = per_client - max(1, per_client // 6)  # a few of each client's requests are over it
    per_client_streams, global_streams = 3, 2 * clients
    tokens = [f"tok_soak_burst_client_{n:02d}" for n in range(clients)]
    env = {
        "AUTH_TOKENS": ",".join(tokens),
        "RATE_LIMIT": f"{rate}/minute",
        "MAX_CONCURRENT_STREAMS": str(per_client_streams),
        "GLOBAL_MAX_CONCURRENT_STREAMS": str(global_streams),
        "TOKEN_BUDGET": "1000000000/day",
        "REDIS_URL": redis_url,
    }
    instances = [await rig.function(**env), await rig.function(**env)]
    now = time.time()
    for handler, _ in instances:
        assert handler.limiter is not None
        handler.limiter.clock = lambda: now  # one rate window for the whole burst
    gate = asyncio.Event()
    rig.demo.push_for("burst", *(Scenario(text=TEXT, gate=gate) for _ in range(global_streams)))
    lines = _Lines()
    log = logging.getLogger("streaming_function")
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    loop = asyncio.get_running_loop()
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            started = loop.time()

            streams: list[aiohttp.ClientResponse] = []

            async def one(i: int) -> tuple[int, str]:
                auth = {"Authorization": f"Bearer {tokens[i % clients]}"}
                resp = await http.post(
                    instances[i % 2][1], data=_body("burst"), headers={**HEADERS, **auth}
                )
                if resp.status == 200:
                    streams.append(resp)  # held open by the gate until every answer is in
                    return 200, ""
                body = await resp.json()
                return resp.status, str(body["error"]["message"])

            answers = await asyncio.gather(*(one(i) for i in range(count)))
            answered_s = loop.time() - started
            held = int(await asyncio.to_thread(_zcard, redis_url, "sfn:streams:*"))
            gate.set()
            for resp in streams:
                await resp.read()
        await lines.wait_requests(count)  # each line is written once its lease is released
        for handler, _ in instances:
            assert handler.limiter is not None
            await handler.limiter.drain()
        left = int(await asyncio.to_thread(_zcard, redis_url, "sfn:streams:*"))
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    statuses = Counter(status for status, _ in answers)
    admitted = [i for i, (status, _) in enumerate(answers) if status == 200]
    by_client = Counter(i % clients for i in admitted)
    rate_refused = sum("Too many requests" in message for _, message in answers)
    fallbacks = sum("limit store" in line for line in lines.lines)
    result: dict[str, Any] = {
        "requests": count,
        "clients": clients,
        "limits": {
            "rate_per_client": rate,
            "streams_per_client": per_client_streams,
            "streams_global": global_streams,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answered_s": round(answered_s, 2),
        "admitted": len(admitted),
        "max_admitted_per_client": max(by_client.values(), default=0),
        "refused_by_rate": rate_refused,
        "leases_while_open": held,
        "leases_left": left,
        "store_warnings": fallbacks,
    }
    wrong = statuses[503] + fallbacks + left
    wrong += abs(len(admitted) - global_streams) + abs(held - global_streams)
    wrong += max(0, result["max_admitted_per_client"] - per_client_streams)
    wrong += abs(rate_refused - clients * (per_client - rate))
    result["unexpected"] = wrong
    return result


def _zcard(url: str, key: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return int(client.zcard(key))
    finally:
        client.close()


async def slow_client_phase(rig: Rig, count: int, write_timeout: float) -> dict[str, Any]:
    """``count`` callers that ask for a 16 MiB answer and never read a byte of it."""
    handler, url = await rig.function(
        CLIENT_WRITE_TIMEOUT=str(write_timeout),
        MAX_CONCURRENT_STREAMS=str(count),
        REPETITION_WINDOW="0",
    )
    big = ["x" * 4096] * 4096
    rig.demo.forget()  # next_request() below must see only this phase's requests
    for i in range(count):
        rig.demo.push_for(f"slow{i}", Scenario(tokens=big))
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    sockets = []
    rss_before = Resources.now().rss_mb
    started = loop.time()
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            body = _body(f"slow{i}")
            head = (
                f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            await loop.sock_sendall(sock, head + body)
        seen = [await rig.demo.next_request() for _ in range(count)]
        rss_stalled = Resources.now().rss_mb
        closed_after: list[float] = []
        not_closed = 0
        for request in seen:
            try:
                async with asyncio.timeout(write_timeout * 2 + 10):
                    await request.closed.wait()
                closed_after.append(loop.time() - started)
            except TimeoutError:
                not_closed += 1
        assert handler.limiter is not None
        probe = await handler.limiter.store.acquire([("streams:ip:127.0.0.1", 1)], "p", 30, 0)
        leases_left = 0 if probe is None else 1
    finally:
        for sock in sockets:
            sock.close()
    return {
        "callers": count,
        "write_timeout_s": write_timeout,
        "upstream_closed": len(closed_after),
        "closed_after_s_max": round(max(closed_after, default=0.0), 2),
        "upstream_events_sent_max": max(s.events_sent for s in seen),
        "rss_mb_growth_while_stalled": round(rss_stalled - rss_before, 1),
        "leases_left": leases_left,
        "unexpected": not_closed + leases_left,
    }


class _Failures(logging.Handler):
    """Counts the function's unexpected exceptions (logged with a traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def run(plan: Plan, only: tuple[str, ...] = PHASES) -> Report:
    """One whole run (or ``only`` these phases); the function's per-request log lines are
    muted meanwhile."""
    log = logging.getLogger("streaming_function")
    level, failures = log.level, _Failures()
    log.setLevel(logging.ERROR)
    log.addHandler(failures)
    try:
        report = await _run(plan, only)
    finally:
        log.removeHandler(failures)
        log.setLevel(level)
    report.phases["function"] = {"tracebacks": failures.count, "unexpected": failures.count}
    report.unexpected += failures.count
    return report


async def _run(plan: Plan, only: tuple[str, ...] = PHASES) -> Report:
    rng = random.Random(plan.seed)
    report = Report(plan=asdict(plan))
    keepalive = 15.0 * plan.silence / 90.0  # the default interval for the real 90 s
    async with Rig(keepalive) as rig:
        baseline = Resources.now()
        report.baseline = asdict(baseline)
        if "concurrent" in only:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                report.phases["concurrent"] = await concurrent_phase(rig, http, plan.concurrent)
            report.phases["concurrent"]["after"] = await rig.settle(baseline)
        if "aborts" in only:
            report.phases["aborts"] = await abort_phase(rig, plan.aborts, rng)
            report.phases["aborts"]["after"] = await rig.settle(baseline)
        if "soak" in only:
            soak = await soak_phase(rig, plan.requests, plan.soak_concurrency, rng)
            report.phases["soak"] = soak
            report.phases["soak"]["after"] = await rig.settle(baseline)
        if "silence" in only:
            report.phases["silence"] = await silence_phase(rig, plan.silent_streams, plan.silence)
            report.phases["silence"]["after"] = await rig.settle(baseline)
        if "burst" in only:
            with RedisProcess() as store:
                report.phases["burst"] = await burst_phase(rig, plan.burst, store.url)
        if "slow_clients" in only:
            slow = await slow_client_phase(rig, plan.slow_clients, plan.write_timeout)
            report.phases["slow_clients"] = slow
    for phase in report.phases.values():
        after = phase.get("after", {})
        leaks = after.get("upstream_in_use", 0) + max(0, after.get("fds_over_baseline", 0))
        leaks += max(0, after.get("tasks_over_baseline", 0))
        phase["leaks"] = leaks
        report.unexpected += phase["unexpected"] + leaks
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load and soak the function on loopback.")
    parser.add_argument("--scale", type=float, default=float(os.environ.get("SOAK_SCALE", "1")))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    plan = Plan().scaled(args.scale) if args.scale != 1 else Plan()
    started = time.monotonic()
    report = asyncio.run(run(plan, only))
    result = asdict(report)
    result["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"unexpected: {report.unexpected}; written to {args.out}")
    return 1 if report.unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
