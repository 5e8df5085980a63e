"""Process plumbing for the bench: spawn a server and wait for its READY line; read a process's
CPU time and resident memory from /proc; raise the open-file limit."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")

# The relays measured (the subjects) run at this nice value, ahead of the bench's own processes
# (the upstream and the clients share the machine's cores with them; a deployed relay shares its
# instance with neither). Without it the scheduler preempts whichever relay uses more CPU far
# more often than in proportion (100 paced streams: 222 involuntary context switches per 1,000
# events for the function against 77 for the pass-through, for 1.27x the CPU) and holds it in
# the run queue while events pile up, so each wake-up finds about nine events, not one as on an
# instance of its own (docs/performance.md, tenth pass). BENCH_SUBJECT_NICE=0 measures without
# it. Raising a priority needs CAP_SYS_NICE (root): without it the bench says so and goes on.
SUBJECT_NICE = int(os.environ.get("BENCH_SUBJECT_NICE", "-10"))
_priority_warned = False
_priority_applied = False


def prioritize(pid: int) -> bool:
    """Run process ``pid`` at :data:`SUBJECT_NICE`; whether it does."""
    global _priority_warned, _priority_applied
    if SUBJECT_NICE == 0:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, SUBJECT_NICE)
    except PermissionError:
        if not _priority_warned:
            _priority_warned = True
            print(
                f"bench: cannot set the relays' nice to {SUBJECT_NICE} (needs CAP_SYS_NICE); "
                "they share the cores with the bench's own processes as equals",
                file=sys.stderr,
            )
        return False
    _priority_applied = True
    return True


def subjects_prioritized() -> bool:
    """Whether a relay this process started runs ahead of its own processes (for the results)."""
    return _priority_applied


_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one (1,000 streams need 2,000+ sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fast_loop_policy() -> None:
    """Use uvloop for bench infrastructure (upstream, client) when it is installed."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads so far, in nanosecond resolution (the first field
    of /proc/<pid>/task/*/schedstat); /proc/<pid>/stat's utime+stime count 10 ms ticks, too
    coarse for a few thousand events. Falls back to those ticks where schedstat is missing."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended while we looked
    except FileNotFoundError:
        total = 0
    if total:
        return total / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def kernel_counts(pid: int) -> dict[str, float]:
    """What the kernel counts for a process so far: user and system CPU seconds (10 ms ticks),
    minor page faults, voluntary and involuntary context switches (all threads). Tells where a
    CPU difference lies: in our Python (user) or in system calls and faults (system)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    counts = {
        "user": int(fields[11]) / _TICK,
        "system": int(fields[12]) / _TICK,
        "minflt": float(fields[7]),
        "voluntary": 0.0,
        "involuntary": 0.0,
    }
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended while we looked
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counts["voluntary"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                counts["involuntary"] += int(line.split()[1])
    return counts


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (/proc/<pid>/statm, second field)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


class Server:
    """A server process of ours that prints ``READY <url>`` once it listens."""

    def __init__(
        self,
        args: list[str],
        *,
        log: Path | None = None,
        timeout: float = 30,
        root: Path = ROOT,
        subject: bool = False,
    ) -> None:
        """``root``: the tree whose modules the process runs (another checkout, for an A/B);
        ``subject``: a relay being measured, run ahead of the bench's own processes
        (:func:`prioritize`)."""
        extra = os.environ.get("PYTHONPATH", "")
        stderr = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            stderr = log.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            cwd=root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), extra]))},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        if stderr is not None:
            stderr.close()
        self.ahead = subject and prioritize(self.proc.pid)  # runs ahead of the bench's own
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY ") or not line:
                break
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{' '.join(args)} did not start (got {line!r})")
        self.url = line.split(" ", 1)[1].strip()
        # Keep draining stdout (the function logs a line per request) so the pipe never fills.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisProcess:
    """A ``redis-server`` without persistence on a free loopback port, for the limit phases
    (Debian's package: ``make deps-redis``)."""

    def __init__(self, timeout: float = 10) -> None:
        import shutil
        import socket

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run `make deps-redis`")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.01)  # polling a starting process

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
