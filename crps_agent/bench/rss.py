"""Peak resident memory of this process and its children, sampled in a thread.

    with PeakRSS() as peak:
        ...
    peak.peak_mb
"""

from __future__ import annotations

import threading
from contextlib import suppress


class PeakRSS:
    """Peak resident memory (MB) of this process and its descendants, sampled every
    `every` seconds in a thread (psutil; without it, this process's own ru_maxrss)."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> float:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        try:
            self.peak_mb = self._sample()
        except ImportError:  # no psutil: the process's own peak over its life
            import resource

            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return self
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._sample())


class CpuTime:
    """CPU seconds (user + system) this process and its descendants (an engine's processes)
    used inside the block: `main_s` and `children_s`. A child that exits inside the block
    counts up to its last sample (taken at the start and end only: processes that start
    and end inside it are missed)."""

    def __init__(self) -> None:
        self.main_s = 0.0
        self.children_s = 0.0
        self._start: dict[int, float] = {}

    @staticmethod
    def _sample() -> dict[int, float]:
        import psutil

        me = psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            with suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    def __enter__(self) -> CpuTime:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        end = self._sample()
        me = os.getpid()
        for pid, t in end.items():
            used = t - self._start.get(pid, 0.0)
            if pid == me:
                self.main_s = used
            else:
                self.children_s += used
