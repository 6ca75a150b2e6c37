"""Where a run's time and memory go, stage by stage: `CURATE_PROFILE=FILE curate run ...` writes
them to FILE as JSON (bench/bench_scale.py reads it); without the variable, nothing is measured."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from curate.io import write_json


class Profile:
    """Wall time and peak memory of each stage of a run, written to the JSON file named by the
    environment variable CURATE_PROFILE (bench/bench_scale.py reads it); off without it. CPU time
    is the process's, all threads (steadier than wall time on a shared machine). The peak
    is the kernel's high-water mark of the resident set (VmHWM), reset at the start of each stage
    through /proc/self/clear_refs: exact, where a sampling thread misses what a call holding the
    GIL allocates and frees (a 20 ms sampler reported 1.37 GB for a run whose ru_maxrss was 2.97 GB).
    The reset also resets the ru_maxrss a parent reads: the run's peak is the largest stage peak."""

    def __init__(self):
        self.path = os.environ.get("CURATE_PROFILE")
        self.stages: list[dict] = []

    @staticmethod
    def _status(field: str) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    @staticmethod
    def _reset_peak() -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS
        except OSError:
            pass

    @contextmanager
    def stage(self, name: str, rows: int | None = None):
        if not self.path:
            yield
            return
        self._reset_peak()
        before, t0, cpu0 = self._status("VmRSS"), time.time(), time.process_time()
        try:
            yield
        finally:
            peak = max(self._status("VmHWM"), self._status("VmRSS"))
            self.stages.append({"stage": name, "seconds": round(time.time() - t0, 3), "rows": rows,
                                "cpu_seconds": round(time.process_time() - cpu0, 3),
                                "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1)})
            write_json({"stages": self.stages}, self.path)


PROFILE = Profile()
