"""Process-wide settings a command (or a search worker process) applies once, explicitly: nothing in the package
changes threads, logging or warnings merely by being imported."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

from .errors import UserError


def configure(threads: int | None = None) -> None:
    """Pin torch's CPU threads (recorded in every result) and quiet the libraries' info chatter."""
    import torch
    from transformers.utils import logging as hf_logging

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines and its 'experimental' warnings (multivariate TPE, constraints, metric names:
    stable enough for our use), silenced only while a study runs."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
