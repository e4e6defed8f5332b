"""Load awareness: a busy loop in another process is seen before timing; a compute- or memory-bound reference
kernel slower than the profile recorded is reported with its size."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from amoeba_search.profiling import load


def test_other_processes_busy_loops_are_seen():
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        warnings = load.load_warnings()
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert any("the machine is loaded" in line for line in warnings)


def test_a_slower_machine_than_the_profile_recorded_is_reported(monkeypatch):
    monkeypatch.setattr(load, "other_busy_fraction", lambda seconds=0.5: 0.0)
    monkeypatch.setattr(load, "REFERENCES", {"reference_kernel_ms": (lambda: 13.0, "a reference matmul"),
                                             "reference_memory_ms": (lambda: 50.0, "a memory-bound reference")})
    (line,) = load.load_warnings({"reference_kernel_ms": 10.0})          # an older profile: the matmul only
    assert "a reference matmul 30% slower than when the profile was made" in line
    assert load.load_warnings({"reference_kernel_ms": 12.5}) == []        # within 15%: no warning
    (line,) = load.load_warnings({"reference_kernel_ms": 12.5, "reference_memory_ms": 40.0})
    assert "a memory-bound reference 25% slower" in line                 # compute as recorded, memory not


def test_the_references_time_real_kernels():
    speeds = load.reference_speeds()
    assert set(speeds) == {"reference_kernel_ms", "reference_memory_ms"} and all(v > 0 for v in speeds.values())
