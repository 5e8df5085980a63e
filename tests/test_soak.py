"""The short variant of ``bench/soak.py`` (``python -m bench.soak`` runs the full size).

Concurrent streams, random aborts, a mixed-fault soak, a (compressed) silent phase, a burst
against real Redis and callers that stop reading, all on loopback: no unexpected outcome, every
aborted upstream request closed within 1 s, every limit held with no 503 and no lease left, and
no file descriptor, task or upstream connection left behind.
"""

from __future__ import annotations

from bench.soak import Plan, run

SHORT = Plan(
    concurrent=40,
    aborts=60,
    requests=300,
    soak_concurrency=32,
    silence=1.5,
    silent_streams=2,
    burst=60,
    slow_clients=2,
    write_timeout=0.5,
)


async def test_short_soak_leaves_nothing_behind() -> None:
    report = await run(SHORT)
    phases = report.phases
    assert phases["concurrent"]["complete"] == SHORT.concurrent
    assert phases["aborts"]["upstream_not_closed_within_1s"] == 0
    assert phases["soak"]["unexpected_outcomes"] == {}
    assert phases["silence"]["complete"] == SHORT.silent_streams
    assert phases["silence"]["keepalives_min"] >= 4
    assert phases["function"]["tracebacks"] == 0
    burst = phases["burst"]
    assert "503" not in burst["statuses"]
    assert burst["admitted"] == burst["limits"]["streams_global"]
    assert burst["leases_left"] == 0
    assert burst["unexpected"] == 0
    slow = phases["slow_clients"]
    assert slow["upstream_closed"] == SHORT.slow_clients
    assert slow["leases_left"] == 0
    for name in ("concurrent", "aborts", "soak", "silence"):
        after = phases[name]["after"]
        assert after["upstream_in_use"] == 0, name
        assert after["fds_over_baseline"] <= 0, (name, after)
        assert after["tasks_over_baseline"] <= 0, (name, after)
    assert report.unexpected == 0
