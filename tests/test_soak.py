"""The short variant of ``bench/soak.py`` (``python -m bench.soak`` runs the full size).

Concurrent streams, random aborts, a mixed-fault soak and a (compressed) silent phase, all on
loopback: no unexpected outcome, every aborted upstream request closed within 1 s, and no file
descriptor, task or upstream connection left behind.
"""

from __future__ import annotations

from bench.soak import Plan, run

SHORT = Plan(
    concurrent=40, aborts=60, requests=300, soak_concurrency=32, silence=1.5, silent_streams=2
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
    for name in ("concurrent", "aborts", "soak", "silence"):
        after = phases[name]["after"]
        assert after["upstream_in_use"] == 0, name
        assert after["fds_over_baseline"] <= 0, (name, after)
        assert after["tasks_over_baseline"] <= 0, (name, after)
    assert report.unexpected == 0
