"""Is the machine in the state latencies were recorded in? Two cheap checks before timing anything:

- other work: the share of all CPUs busy over half a second while this process sleeps (Linux /proc/stat; the
  1-minute load average elsewhere), so a busy-loop in another process is seen, our own work is not;
- speed: a fixed matmul timed now against the same kernel timed when the profile was made (recorded in its
  environment as `reference_kernel_ms`): a throttled, shared or different machine runs it at another speed.

Either prints a warning beside every measured latency (and `--strict` refuses), because a latency measured on a
loaded machine says little about the deployed subnet, and a prediction from a profile made in other conditions
says little about this machine."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

BUSY_WARN = 0.25            # share of all CPUs busy with other work
SPEED_WARN_PCT = 15.0       # reference kernel slower or faster than recorded by more than this
_KERNEL_SIZE, _KERNEL_REPEATS = 256, 20


def other_busy_fraction(seconds: float = 0.5) -> float:
    """Share of all CPUs busy while this process sleeps: other processes' load."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
        return sum(fields[:8]), idle

    total_a, idle_a = sample()
    time.sleep(seconds)
    total_b, idle_b = sample()
    total = total_b - total_a
    return 0.0 if total <= 0 else max(0.0, 1 - (idle_b - idle_a) / total)


def reference_kernel_ms() -> float:
    """Median of 9 timings of 20 (256 x 256) fp32 matmuls with torch's current threads, after 2 warm-ups."""
    import torch

    a = torch.randn(_KERNEL_SIZE, _KERNEL_SIZE, generator=torch.Generator().manual_seed(0))
    times = []
    for index in range(11):
        began = time.perf_counter()
        for _ in range(_KERNEL_REPEATS):
            a @ a
        if index >= 2:
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def load_warnings(recorded_reference_ms: float | None = None) -> list[str]:
    """Lines to print beside measured latencies (empty when the machine looks as it did)."""
    lines = []
    busy = other_busy_fraction()
    if busy > BUSY_WARN:
        lines.append(f"the machine is loaded: {busy:.0%} of its CPUs were busy with other work just before timing; "
                     "measured latencies will be slower and noisier than on an idle machine")
    if recorded_reference_ms:
        now = reference_kernel_ms()
        change_pct = 100 * (now - recorded_reference_ms) / recorded_reference_ms
        if abs(change_pct) > SPEED_WARN_PCT:
            lines.append(f"this machine runs a reference matmul {abs(change_pct):.0f}% "
                         f"{'slower' if change_pct > 0 else 'faster'} than when the profile was made "
                         f"({now:.2f} vs {recorded_reference_ms:.2f} ms): predictions from it are off by about as much")
    return lines
