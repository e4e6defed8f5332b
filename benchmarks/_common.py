"""Shared setup for benchmark scripts: pinned threads, quiet logs, and where results go."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def setup(threads: int) -> str:
    """Pin torch threads, silence library progress bars; returns the command line for the results file."""
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)
