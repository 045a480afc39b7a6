"""The bench's load-insensitive instruments: CPU seconds of this process and its children,
and the engine stream's step counts."""

from __future__ import annotations

import subprocess
import sys
import time

from crps_agent.backends.vllm_stream import StreamStats
from crps_agent.bench.rss import CpuTime


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_time_splits_this_process_from_its_children() -> None:
    with CpuTime() as cpu:
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time\nend = time.process_time() + 0.4\n"
                                  "while time.process_time() < end: pass\n"
                                  "time.sleep(5)"])
        _burn(0.3)
        deadline = time.monotonic() + 20
        import psutil

        while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    child.kill()
    child.wait()
    # psutil counts in clock ticks (10 ms) where process_time is finer: a tick's slack.
    assert 0.3 - 0.02 <= cpu.main_s < 3.0
    assert cpu.children_s >= 0.4


def test_stream_stats_median_and_reset() -> None:
    stats = StreamStats()
    for in_flight, tokens in ((4, 4), (8, 8), (8, 7), (20, 3)):
        stats.steps += 1
        stats.seq_steps += in_flight
        stats.in_flight[in_flight] += 1
        stats.tokens += tokens
    d = stats.to_dict()
    assert (d["mean_in_flight"], d["median_in_flight"], d["max_in_flight"]) == (10.0, 8.0, 20)
    assert d["tokens_per_step"] == 5.5
    stats.in_flight[2] += 1
    stats.steps += 1
    assert stats.median_in_flight() == 8.0
    stats.reset()
    assert stats.to_dict()["steps"] == 0 and not stats.in_flight and stats.median_in_flight() == 0
