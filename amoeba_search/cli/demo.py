"""`amoeba demo` (what `make demo` runs): the whole pipeline on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DataDirOption, ThreadsOption, check_output, check_range, console, example, load, new_app, setup

app = new_app("")


@app.command(epilog=example("amoeba demo --threads 2", "amoeba demo --target-ratio 0.8 --out demo80",
                            "amoeba demo --space uniform --proxy ppl --out demo-uniform"))
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Where every demo artifact is written."),
    target_ratio: float = typer.Option(0.6, "--target-ratio", help="Decode latency target, share of the full "
                                                                   "model's predicted latency."),
    space: str = typer.Option("heterogeneous", help="heterogeneous: each layer removed or at its own heads x MLP "
                                                    "(exact knapsack, re-ranked by the proxy); uniform: one width "
                                                    "for all kept layers (Optuna, --trials)."),
    proxy: str = typer.Option("self_ppl", help="Accuracy proxy of the search (`amoeba search --help` lists them); "
                                               "self_ppl writes its held-out text once per machine (~1 min)."),
    trials: int = typer.Option(30, help="Uniform search trials, and Pareto trials."),
    questions: int = typer.Option(100, "--questions", help="ARC-easy validation questions per model."),
    windows: int = typer.Option(8, help="WikiText-2 test windows (512 tokens) per model."),
    adapters: str = typer.Option("default", "--adapters", help="Fine-tuned adapters to search and extract with: "
                                                               "'default' = the shipped ones, a dir from `amoeba "
                                                               "finetune`, or 'none'."),
    strict: bool = typer.Option(False, "--strict", help="Refuse to time on a loaded machine (else a warning)."),
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """The whole pipeline on the embedded model: strategy -> profile -> search -> extract -> measure -> Pareto plot."""
    setup(threads)
    from ..demo import check_space, run_demo
    from ..search.proxies import PROXIES

    check_space(space)                                   # both refused before the model loads
    PROXIES.get(proxy)                                   # an unknown name is refused with the known ones
    check_range("--target-ratio", target_ratio, 0, low_open=True)
    check_range("--trials", trials, 1)
    check_range("--questions", questions, 1)
    check_range("--windows", windows, 1)
    check_output(out, directory=True)
    full = load("default")
    chosen = None
    if adapters != "none":
        from ..finetune.checkpoint import shipped_adapters_for

        chosen = shipped_adapters_for(full) if adapters == "default" else Path(adapters)
    run_demo(console, full, out, target_ratio, trials, questions=questions, windows=windows, data_dir=data_dir,
             adapters=chosen, strict=strict, space=space, proxy=proxy)
