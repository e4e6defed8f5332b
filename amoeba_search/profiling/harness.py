"""Timing harness: warm up, repeat until the median is known to ±rel (95%) or a cap, report median and spread."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

Z95 = 1.96


@dataclass(frozen=True)
class StopRule:
    """When to stop repeating: the median's 95% interval within ±rel, after min_repeats, or a cap is hit."""

    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 200
    rel: float = 0.02
    max_seconds: float = 10.0

    @classmethod
    def quick(cls) -> "StopRule":
        return cls(warmup=2, min_repeats=5, max_repeats=40, rel=0.05, max_seconds=5.0)


@dataclass
class Measurement:
    samples_ms: list[float]
    converged: bool
    peak_mem_mib: float | None = None
    stats: dict = field(init=False)

    def __post_init__(self) -> None:
        self.stats = summarize(self.samples_ms)


def median_ci(ordered: list[float]) -> tuple[float, float]:
    """Distribution-free 95% interval of the median from order statistics (binomial normal approximation)."""
    n = len(ordered)
    half = Z95 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[low], ordered[high]


def summarize(samples_ms: list[float]) -> dict:
    """median / p10 / p90 / CV / half-width of the median's 95% interval, all in ms or percent."""
    ordered = sorted(samples_ms)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    median = statistics.median(ordered)
    low, high = median_ci(ordered)
    mean = statistics.fmean(ordered)
    return {"median_ms": median, "p10_ms": quantile(0.1), "p90_ms": quantile(0.9),
            "cv_pct": 100 * statistics.pstdev(ordered) / mean if mean else 0.0,
            "ci95_pct": 100 * (high - low) / 2 / median if median else 0.0, "repeats": len(ordered)}


def median_known(samples: list[float], rule: StopRule) -> bool:
    """The stop rule's test: the median's 95% interval is within ±rel of it."""
    low, high = median_ci(sorted(samples))
    return (high - low) / 2 <= rule.rel * statistics.median(samples)


def measure(run: Callable[[], object], reset: Callable[[], object] | None = None,
            sync: Callable[[], object] = lambda: None, rule: StopRule = StopRule(),
            peak_memory: Callable[[], float | None] = lambda: None) -> Measurement:
    """Time `run` (synchronised by `sync`; `reset` restores state between calls, untimed) under the stop rule."""
    for _ in range(rule.warmup):
        run()
        sync()
        if reset:
            reset()
    samples: list[float] = []
    started = time.perf_counter()
    converged = False
    while len(samples) < rule.max_repeats:
        begin = time.perf_counter()
        run()
        sync()
        samples.append((time.perf_counter() - begin) * 1e3)
        if reset:
            reset()
        if len(samples) >= rule.min_repeats:
            if median_known(samples, rule):
                converged = True
                break
            if time.perf_counter() - started > rule.max_seconds:
                break
    return Measurement(samples, converged, peak_memory())


BURST = 10          # timed calls per visit of a model when two are timed in turns
BURST_WARMUP = 2    # untimed calls after each switch: the other model's weights were just in the caches


def measure_paired(run: Callable[[], object], reset: Callable[[], object] | None,
                   reference_run: Callable[[], object], reference_reset: Callable[[], object] | None,
                   sync: Callable[[], object] = lambda: None, rule: StopRule = StopRule(),
                   peak_memory: Callable[[], float | None] = lambda: None) -> tuple[Measurement, Measurement]:
    """Time a model and a fixed reference model in alternating bursts (BURST_WARMUP untimed calls after every
    switch, then BURST timed ones), until the model's median is known to ±rel or a cap, as `measure`. Why: a
    shared VM's speed moves by tens of percent within minutes (amd-epyc llama.cpp decode: the same model at 3.0
    and 3.9 ms in repeats ~15 s apart), far more than the differences a profile must resolve. Both models see the
    same moments, so their ratio holds where each alone does not (there, two same-shape models: within 0.5-1.7%
    of 1 between repeats, against 2.4-9.8% timed one after the other). The caps are twice `measure`'s: half the
    time goes to the reference."""
    def burst(step: Callable[[], object], undo: Callable[[], object] | None, timed: int) -> list[float]:
        out = []
        for index in range(BURST_WARMUP + timed):
            begin = time.perf_counter()
            step()
            sync()
            if index >= BURST_WARMUP:
                out.append((time.perf_counter() - begin) * 1e3)
            if undo:
                undo()
        return out

    samples: list[float] = []
    reference: list[float] = []
    started = time.perf_counter()
    converged = False
    while len(samples) < rule.max_repeats:
        samples += burst(run, reset, min(BURST, rule.max_repeats - len(samples)))
        reference += burst(reference_run, reference_reset, BURST)
        if len(samples) >= rule.min_repeats:
            if median_known(samples, rule):
                converged = True
                break
            if time.perf_counter() - started > 2 * rule.max_seconds:
                break
    return Measurement(samples, converged, peak_memory()), Measurement(reference, True)
