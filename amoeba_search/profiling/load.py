"""Is the machine in the state latencies were recorded in? Cheap checks before timing anything:

- other work: the share of all CPUs busy over half a second while this process sleeps (Linux /proc/stat; the
  1-minute load average elsewhere), so a busy-loop in another process is seen, our own work is not;
- speed: two fixed kernels timed now against the same kernels timed when the profile was made (recorded in its
  environment): a small matmul (`reference_kernel_ms`, compute-bound) and a matrix-vector product over 256 MiB
  (`reference_memory_ms`, memory-bound, as eager decode is). Why both: on a shared VM, torch-eager decode once ran
  25% slower than its profile for tens of minutes while the matmul ran at its recorded speed; a throttled core
  slows the first, a neighbour streaming memory the second.

Either prints a warning beside every measured latency (and `--strict` refuses), because a latency measured on a
loaded machine says little about the deployed subnet, and a prediction from a profile made in other conditions
says little about this machine.

After timing, a third check needs no probe: the full model measured through the flow against its prediction
(`drift_warning`). Why: on the 2-core Xeon, llama.cpp decode of the full model ran 10-12 ms for an hour against
the 5.4 ms of its profile, while both probes stayed within 17% and the CPUs showed ~1% steal; only the flow itself
saw it."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

BUSY_WARN = 0.25            # share of all CPUs busy with other work
SPEED_WARN_PCT = 15.0       # reference kernel slower or faster than recorded by more than this
DRIFT_WARN_PCT = 10.0       # full model measured vs predicted by more than this
_KERNEL_SIZE, _KERNEL_REPEATS = 256, 20
_MEMORY_ROWS, _MEMORY_COLUMNS = 65536, 1024      # fp32: 256 MiB, larger than most last-level caches


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


def _median_ms(run, repeats: int, warmups: int = 2) -> float:
    times = []
    for index in range(warmups + repeats):
        began = time.perf_counter()
        run()
        if index >= warmups:
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def reference_kernel_ms() -> float:
    """Median of 9 timings of 20 (256 x 256) fp32 matmuls with torch's current threads, after 2 warm-ups."""
    import torch

    a = torch.randn(_KERNEL_SIZE, _KERNEL_SIZE, generator=torch.Generator().manual_seed(0))

    def run():
        for _ in range(_KERNEL_REPEATS):
            a @ a
    return _median_ms(run, 9)


def reference_memory_ms() -> float:
    """Median of 9 timings of one (65536 x 1024) fp32 matrix times a vector (reads 256 MiB, like a decode step
    reads weights), with torch's current threads, after 2 warm-ups."""
    import torch

    matrix = torch.ones(_MEMORY_ROWS, _MEMORY_COLUMNS)
    vector = torch.ones(_MEMORY_COLUMNS)
    return _median_ms(lambda: matrix @ vector, 9)


# environment field -> (how to time it now, what it is in a warning)
REFERENCES = {"reference_kernel_ms": (reference_kernel_ms, "a reference matmul"),
              "reference_memory_ms": (reference_memory_ms, "a memory-bound reference (256 MiB matrix-vector)")}


def reference_speeds() -> dict[str, float]:
    """Every reference timed now, for a profile's environment."""
    return {field: round(timed(), 4) for field, (timed, _) in REFERENCES.items()}


def speed_changes(environment: dict | None) -> list[tuple[str, float, float, float]]:
    """(what, now_ms, recorded_ms, change_pct) for every reference the profile's environment recorded, timed now:
    the same CPU name can hide another CPU generation (a VM says "AMD EPYC" for several), and a profile made on one
    predicts the other badly."""
    changes = []
    for field, (timed, what) in REFERENCES.items():
        recorded = (environment or {}).get(field)
        if recorded:
            now = timed()
            changes.append((what, now, recorded, 100 * (now - recorded) / recorded))
    return changes


def load_warnings(environment: dict | None = None) -> list[str]:
    """Lines to print beside measured latencies (empty when the machine looks as it did); `environment` is the
    profile's, and only the references it recorded are compared (older profiles have the matmul only)."""
    lines = []
    busy = other_busy_fraction()
    if busy > BUSY_WARN:
        lines.append(f"the machine is loaded: {busy:.0%} of its CPUs were busy with other work just before timing; "
                     "measured latencies will be slower and noisier than on an idle machine")
    for what, now, recorded, change_pct in speed_changes(environment):
        if abs(change_pct) > SPEED_WARN_PCT:
            lines.append(f"this machine runs {what} {abs(change_pct):.0f}% "
                         f"{'slower' if change_pct > 0 else 'faster'} than when the profile was made "
                         f"({now:.2f} vs {recorded:.2f} ms): predictions from it are off by about as much")
    return lines


def drift_warning(full_predicted_ms: float, full_measured_ms: float, subnet_predicted_ms: float | None = None,
                  subnet_measured_ms: float | None = None) -> str | None:
    """A line when the full model, timed now through the flow, is more than DRIFT_WARN_PCT off its prediction: the
    machine is not in the state its profile was made in, so a subnet's measured-vs-predicted error is mostly the
    machine's. With the subnet's figures it adds the comparison that survives a uniformly slower machine: the
    subnet's latency as a share of the full model's, predicted and measured."""
    drift_pct = 100 * (full_measured_ms - full_predicted_ms) / full_predicted_ms
    if abs(drift_pct) <= DRIFT_WARN_PCT:
        return None
    line = (f"the full model measured {full_measured_ms:.2f} ms against {full_predicted_ms:.2f} ms predicted "
            f"({drift_pct:+.0f}%): this machine is not in the state its profile was made in, so measured-vs-"
            "predicted errors here are mostly the machine's; time again on an idle machine or re-profile")
    if subnet_predicted_ms is not None and subnet_measured_ms is not None:
        line += (f" (the subnet is {subnet_predicted_ms / full_predicted_ms:.0%} of the full model predicted, "
                 f"{subnet_measured_ms / full_measured_ms:.0%} measured)")
    return line
