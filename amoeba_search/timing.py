"""Latency measurement: warm up, repeat, and report the median with its spread, never a single run."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def summarize_ms(samples_ms: list[float]) -> dict:
    """median / p10 / p90 / coefficient of variation of latency samples in milliseconds."""
    ordered = sorted(samples_ms)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    mean = statistics.fmean(ordered)
    return {"median_ms": statistics.median(ordered), "p10_ms": quantile(0.1), "p90_ms": quantile(0.9),
            "cv": statistics.pstdev(ordered) / mean if mean else 0.0, "repeats": len(ordered),
            "samples_ms": [round(s, 4) for s in samples_ms]}


def time_call(fn: Callable[[], object], warmup: int = 2, repeats: int = 10) -> dict:
    """Time `fn` after `warmup` untimed calls; synchronizes CUDA so GPU work is inside the timed region."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return summarize_ms(samples)


@torch.inference_mode()
def forward_latency(model: torch.nn.Module, tokens: int = 128, batch: int = 1, warmup: int = 2,
                    repeats: int = 10) -> dict:
    """Latency of one full forward (prefill) over `tokens` random tokens: a quick size-vs-speed figure."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator)
    ids = ids.to(next(model.parameters()).device)
    result = time_call(lambda: model(input_ids=ids, use_cache=False), warmup=warmup, repeats=repeats)
    return {"tokens": tokens, "batch": batch, "threads": torch.get_num_threads(), **result}
