"""What a user gets, checked in the order that fails cheapest: the machine's state, then real latency through the
profiled flow (the full model first, then what is handed over), then held-out quality and greedy answers. The demo
and `amoeba search --extract` both report through here, so `--strict` refuses at the same point in both: before any
quality run, when the probes or the full model's own latency say the timings cannot be trusted."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console

from .errors import UserError
from .models import LoadedModel
from .profiling import load as load_checks
from .profiling import profile as profiling
from .profiling.flows import FLOWS
from .profiling.lut import LookupTable, Setting
from .quality import report_row
from .subnet import Subnet

# (name, model, view or None, predicted ms or None): the full model first, the handed-over model second
Entry = tuple[str, LoadedModel, Subnet | None, float | None]


def measure_handover(entries: list[Entry], lut: LookupTable, setting: Setting, data_dir: Path,
                     questions: int | None = None, windows: int | None = None, passes: int = 3, timed: bool = True,
                     strict: bool = False, console: Console | None = None) -> tuple[list[dict], list[str]]:
    """Report rows (quality.report_row) for every entry and the warnings that go with them. Dense models are timed
    when `timed` (this is the profiled machine) through the profile's flow, their passes combined as its rows
    were (its estimator; `paired`: in turns with its reference model); views are not timed (a view is not what is
    deployed). The profile's environment is what the speed probes compare against."""
    def status(what: str):
        return console.status(what) if console is not None else contextlib.nullcontext()

    warnings = load_checks.load_warnings(lut.meta["environment"]) if timed else []
    if warnings and strict:
        raise UserError(f"--strict: {warnings[0]}; time on an idle machine, or drop --strict to get a warning")
    flow_name = lut.meta["flow"]
    flow = FLOWS.get(flow_name)
    pairing = profiling.reference_pairing(flow, entries[0][1].model, lut, setting) if timed else None
    latencies = []
    for name, loaded, view, _ in entries:
        with status(f"{name}: {setting.phase} latency through {flow_name}"):
            latencies.append(profiling.measured_latency(flow, loaded.model, setting, passes, lut.estimator, pairing)
                             if timed and view is None else {})
    if timed:
        (_, _, _, full_predicted), (_, _, _, predicted) = entries[:2]
        # `paired` figures are stated at the profile's speed, so the machine's state now is in the plain medians
        now = "median_ms" if pairing else "measured_ms"
        drift = load_checks.drift_warning(full_predicted, latencies[0][now], predicted, latencies[1].get(now))
        if drift and strict:
            raise UserError(f"--strict: {drift}")
        warnings += [drift] if drift else []
    rows = []
    for (name, loaded, view, predicted), latency in zip(entries, latencies):
        with status(f"{name}: WikiText-2 test ppl, ARC-easy accuracy, greedy answers"):
            rows.append(report_row(name, loaded, view, predicted, latency, data_dir, questions, windows))
    return rows, warnings
