"""What a loaded machine costs a test's timing: the kernel's run delay of threads.

A bound on latency (a loop must answer within 1 s) holds the code to account for its
own work, not for the time a shared, overloaded machine kept its threads waiting for a
core. /proc/<pid>/task/<tid>/schedstat says how long each waited runnable.
"""

from __future__ import annotations

import threading


def run_delays(*paths: str | None) -> list[float]:
    """Seconds each thread (a schedstat path) has waited runnable for a core so far."""
    delays: list[float] = []
    for path in paths:
        if path is None:
            continue
        try:
            with open(path, encoding="ascii") as stats:
                delays.append(int(stats.read().split()[1]) / 1e9)
        except (OSError, IndexError, ValueError):  # gone (a restart), or no schedstats
            delays.append(0.0)
    return delays


class CoreWaits:
    """How long this thread and a server's loop thread have waited runnable for a core
    since it was made (the kernel's run delay): time a shared machine took, which a
    bound on the server's own latency should not count."""

    def __init__(self, pid: int | None) -> None:
        self.paths = (
            f"/proc/self/task/{threading.get_native_id()}/schedstat",
            f"/proc/{pid}/task/{pid}/schedstat" if pid else None,
        )
        self.start = run_delays(*self.paths)

    def waited(self) -> float:
        now = run_delays(*self.paths)
        return max(
            (after - before for before, after in zip(self.start, now, strict=True)), default=0.0
        )
