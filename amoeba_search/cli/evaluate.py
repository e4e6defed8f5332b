"""`amoeba evaluate`: perplexity and multiple-choice accuracy of a model or a subnet of it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (AdaptersOption, DataDirOption, DtypeOption, ModelOption, ThreadsOption, check_output, check_range, console,
                     example, load, new_app, setup)
from ..tasks import TASKS

app = new_app("")


@app.command(epilog=example("amoeba evaluate --tasks wikitext2,arc_easy --questions 200 --windows 20",
                            "amoeba evaluate --subnet s.json --tasks arc_easy,arc_challenge --out s_eval.json",
                            "amoeba evaluate --model ckpt/s --tasks arc_easy"))
def evaluate(
    model: str = ModelOption,
    subnet_file: Optional[Path] = typer.Option(None, "--subnet", "-s", help="Evaluate this subnet via the in-place "
                                                                             "view (no copy of the model)."),
    tasks: str = typer.Option("wikitext2,arc_easy", help=f"Comma list of: {TASKS.choices()}."),
    questions: Optional[int] = typer.Option(None, "--questions", help="First N questions per multiple-choice task "
                                                                      "(default: all)."),
    windows: Optional[int] = typer.Option(None, "--windows", help="First N perplexity windows (default: all)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Perplexity window length (non-overlapping windows)."),
    data_dir: Optional[Path] = DataDirOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the full JSON record here."),
    threads: Optional[int] = ThreadsOption,
    adapters: Optional[Path] = AdaptersOption,
    dtype: str = DtypeOption,
    generate: bool = typer.Option(True, help="Also show greedy answers to 3 fixed prompts (the record keeps them)."),
) -> None:
    """Perplexity (WikiText-2) and multiple-choice accuracy (ARC, MMLU) of a model or subnet -> table + JSON."""
    setup(threads)
    from ..artifacts import write_json_atomic
    from ..data import data_root
    from ..quality import quality
    from ..subnet import ModelDims, Subnet
    from ..tasks.base import parse_tasks

    check_range("--questions", questions, 1)
    check_range("--windows", windows, 1)
    check_range("--seq-len", seq_len, 2)
    check_output(out)
    selected = parse_tasks(tasks)
    root = data_root(data_dir)
    loaded = load(model, adapters, dtype)
    dims = ModelDims.from_config(loaded.model.config)
    spec = Subnet.load(subnet_file, dims, loaded.fingerprint) if subnet_file else None
    record = quality(loaded, spec, root, selected, questions=questions, windows=windows, seq_len=seq_len,
                     generate=generate, progress=True)
    console.print(results_table(record))
    print_quality_notes(record)
    if out:
        write_json_atomic(out, record)
        console.print(f"wrote {out}")


def results_table(record: dict) -> Table:
    from ..quality import metric_cells

    title = record["model"]["name"] + (f" [{record['subnet']['summary']}]" if record["subnet"] else "")
    table = Table(title=escape(title + (" + adapters" if record.get("adapters") else "")))
    for column in ("task", "value", "acc_norm", "scored", "seconds", "tokens/s"):
        table.add_column(column, justify="left" if column in ("task", "scored") else "right")
    for name, r in record["tasks"].items():
        cells = metric_cells(name, r)
        table.add_row(name, cells["value"], cells["norm"], cells["what"], f"{r['seconds']:.1f}",
                      f"{r['tokens_per_s']:.0f}")
    return table


def print_quality_notes(record: dict) -> None:
    """Chance warnings, then the greedy samples: what a user would see first when using the model."""
    for line in record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(line)}")
    for sample in record.get("generation", []):
        console.print(f"[bold]{escape(sample['prompt'])}[/] → {escape(sample['text'])!r}", highlight=False)
