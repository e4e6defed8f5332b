"""The `amoeba` command: thin typer wrappers that parse, call one public function, and print with rich."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Select, extract, evaluate and profile elastic-LLM subnets. "
                       "MODEL is 'default' (the embedded SmolLM2-135M-Instruct) or a local HF checkpoint dir.")
# Piped output (make, CI logs) would otherwise be squeezed into 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)

ModelOption = typer.Option("default", "--model", "-m", help="'default' (embedded SmolLM2-135M) or a HF checkpoint dir.")
ThreadsOption = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice); recorded in results.")


def _setup(threads: int | None):
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load(model: str, adapters: Path | None = None):
    from .models import load_model

    with console.status(f"loading model {model!r} (the first load of the default converts its GGUF once, ~20 s)"):
        loaded = load_model(model)
    if adapters is not None:
        from .finetune.checkpoint import load_adapters

        loaded.adapters = load_adapters(loaded, adapters)
    return loaded


AdaptersOption = typer.Option(None, "--adapters", help="Fine-tuned SMoL adapters dir (`amoeba finetune --out DIR`): "
                                                       "the subnet runs with its shape-gated LoRA update.")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'0-16,27-29' -> [0..16, 27, 28, 29]; ranges are inclusive."""
    layers: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                layers.extend(range(low, high + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise UserError(f"--keep: {part!r} is not a layer index or range like 0-16 (layers are 0..{num_layers - 1})")
    return layers


@app.command()
def info(model: str = ModelOption) -> None:
    """Show a model's shape, parameter count, fingerprint and the widths a subnet may use."""
    _setup(None)
    from .subnet import ModelDims

    loaded = _load(model)
    dims = ModelDims.from_config(loaded.model.config)
    table = Table(show_header=False)
    for key, value in [("path", loaded.path), ("fingerprint", loaded.fingerprint),
                       ("layers", dims.num_layers), ("hidden", dims.hidden_size),
                       ("heads / kv heads / head_dim", f"{dims.num_heads} / {dims.num_kv_heads} / {dims.head_dim}"),
                       ("valid head counts", dims.head_counts()), ("mlp channels", dims.intermediate_size),
                       ("parameters (M)", f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}")]:
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def subnet(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the subnet JSON."),
    model: str = ModelOption,
    strategy: Optional[Path] = typer.Option(None, help="Strategy JSON from `amoeba select`; use with --layers."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Depth to take from --strategy (kept layer count)."),
    keep: Optional[str] = typer.Option(None, help="Kept layers, e.g. '0-16,27-29' (inclusive ranges)."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="Keep the first N layers (drop-last-k)."),
    heads: Optional[int] = typer.Option(None, help="Query heads per layer (whole KV groups or equal per group)."),
    mlp: Optional[float] = typer.Option(None, "--mlp", "--width",
                                        help="MLP width: ratio in (0,1] (e.g. 0.75) or a channel count (> 1)."),
    allocation: str = typer.Option("uniform", help="With a strategy: 'uniform' (same width per layer, extractable) "
                                                    "or 'adaptive' (FLAP global ranking; in-place view only)."),
    compensate: bool = typer.Option(True, help="With a strategy: FLAP bias compensation for removed heads/channels."),
) -> None:
    """Write a subnet spec (layers + heads + MLP channels) as validated JSON; with --strategy, the most important."""
    _setup(None)
    from .subnet import ModelDims, Subnet

    if sum(x is not None for x in (keep, num_layers, strategy)) > 1:
        raise UserError("give one of --keep, --num-layers or --strategy (with --layers)")
    if (strategy is None) != (layers is None):
        raise UserError("--strategy and --layers go together: --strategy s.json --layers 20")
    loaded = _load(model)
    dims = ModelDims.from_config(loaded.model.config)
    if num_layers is not None and not 1 <= num_layers <= dims.num_layers:
        raise UserError(f"--num-layers must be in 1..{dims.num_layers}, got {num_layers}")
    width = None if mlp is None else (int(mlp) if mlp > 1 else float(mlp))
    chosen = None
    if strategy is not None:
        from .selection.strategy import Strategy

        chosen = Strategy.load(strategy)
        chosen.check_model(loaded.fingerprint)
        kept = chosen.layers_for(layers)
    elif keep is not None:
        kept = parse_layers(keep, dims.num_layers)
    else:
        kept = list(range(num_layers if num_layers is not None else dims.num_layers))
    if chosen is not None and chosen.width is not None:
        from .selection.width import width_subnet

        spec = width_subnet(loaded.model, chosen.width, kept, heads=heads, mlp=width, allocation=allocation,
                            compensate=compensate)
    else:
        spec = Subnet.uniform(dims, kept, heads=heads, mlp=width)
    spec.save(out, loaded.fingerprint)
    console.print(f"wrote {out}: {spec.summary(dims)}")


@app.command()
def select(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the strategy JSON."),
    model: str = ModelOption,
    method: str = typer.Option("dp", help="dp (AmoebaLLM dynamic programming), drop_last, shortgpt, shortened_ppl, "
                                          "random."),
    metric: str = typer.Option("ppl", help="Depth calibration: 'ppl' (next-token loss on --calib-file) or 'mmlu' "
                                           "(accuracy on random MMLU validation questions, as the paper)."),
    max_removed: int = typer.Option(15, "--max-removed", help="Compute every depth from N down to N - this."),
    samples: int = typer.Option(16, help="Calibration windows (ppl; also used for width importance)."),
    mmlu_samples: int = typer.Option(40, "--mmlu-samples", help="Calibration questions for --metric mmlu."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration window."),
    seed: int = typer.Option(0, help="Seed for drawing calibration windows (and the random baseline)."),
    calib_file: Optional[Path] = typer.Option(None, "--calib-file", help="Calibration text (default: WikiText-2 "
                                                                        "valid split under the data root)."),
    keep_first: int = typer.Option(0, "--keep-first", help="Never remove the first k layers."),
    keep_last: int = typer.Option(1, "--keep-last", help="Never remove the last k layers (AmoebaLLM keeps 1)."),
    width_method: str = typer.Option("flap", "--width-method", help="Head/channel importance: flap, magnitude, "
                                                                    "wanda, or none."),
    cache: Optional[Path] = typer.Option(None, help="DP state cache (default: OUT.cache.jsonl); reruns resume from it."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: ../shared/data)."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Choose the layers to drop for every depth and rank heads/channels, on calibration data -> strategy JSON."""
    _setup(threads)
    from .data import data_root, read_mmlu, read_text
    from .selection.calibration import multiple_choice_calibration, text_calibration
    from .selection.select import DEPTH_SELECTORS, select_depth

    DEPTH_SELECTORS.get(method)
    if metric not in ("ppl", "mmlu"):
        raise UserError(f"--metric {metric!r}: choose ppl or mmlu")
    if min(keep_first, keep_last, samples, mmlu_samples) < 0 or samples == 0 or seq_len < 2:
        raise UserError("--keep-first/--keep-last must be >= 0, --samples/--mmlu-samples >= 1, --seq-len >= 2")
    if width_method != "none":
        from .selection.width import WIDTH_SCORERS

        WIDTH_SCORERS.get(width_method)
    root = data_root(data_dir) if calib_file is None or metric == "mmlu" else None
    text_path = calib_file or root / "wikitext2" / "valid.txt"
    loaded = _load(model)
    try:
        text = text_calibration(loaded.tokenizer, read_text(Path(text_path)), samples, seq_len, seed,
                                name=str(text_path))
        calibration = text if metric == "ppl" else multiple_choice_calibration(
            loaded.tokenizer, read_mmlu(root / "mmlu" / "zero_shot_val.jsonl"), mmlu_samples, seed,
            name="mmlu/zero_shot_val.jsonl")
    except ValueError as exc:
        raise UserError(f"{exc}: lower --samples/--seq-len/--mmlu-samples or use a longer --calib-file") from exc
    cache_path = cache or out.with_name(out.name + ".cache.jsonl")
    result = select_depth(loaded, calibration, method, max_removed, keep_first, keep_last,
                          cache_path=cache_path if method == "dp" else None, seed=seed,
                          width_method=None if width_method == "none" else width_method, width_calibration=text)
    result.save(out)
    table = Table(title=f"{method}: layers kept per depth ({result.depth['evaluations']} evaluations, "
                        f"{result.depth['seconds']:.0f} s)")
    score_column = "calibration ppl" if metric == "ppl" else "calibration acc % (~)"
    for column in ("layers", "removed layers", score_column):
        table.add_column(column)
    for row in result.depth["table"]:
        removed = sorted(set(range(row["num_layers"] + row["removed"])) - set(row["layers"]))
        loss = row.get("calibration_loss")
        shown = "" if loss is None else f"{math.exp(loss):.2f}" if metric == "ppl" else f"{-100 * loss:.1f}"
        table.add_row(str(row["num_layers"]), ",".join(map(str, removed)) or "-", shown)
    console.print(table)
    console.print(f"wrote {out}; make a subnet with `amoeba subnet --strategy {out} --layers N --out s.json`")


@app.command()
def extract(
    subnet_file: Path = typer.Option(..., "--subnet", "-s", help="Subnet JSON (from `amoeba subnet`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output checkpoint directory (must not exist)."),
    model: str = ModelOption,
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    gguf: Optional[str] = typer.Option(None, help="Also write OUT/model.gguf for llama.cpp with weights in f32, f16, "
                                                  "q8_0 or q4_1 (tokenizer from the embedded model's GGUF)."),
    adapters: Optional[Path] = typer.Option(None, "--adapters", help="Merge these fine-tuned adapters (the subnet's "
                                                                     "gate-mixed LoRA) into the extracted weights."),
) -> None:
    """Write the subnet as a dense HF checkpoint that plain `AutoModelForCausalLM.from_pretrained` loads."""
    _setup(None)
    from .extract import extract as extract_checkpoint
    from .subnet import ModelDims, Subnet

    if gguf is not None:
        from .gguf_export import TYPES

        if gguf not in TYPES:
            raise UserError(f"--gguf {gguf!r}: choose from {', '.join(TYPES)}")

    loaded = _load(model, adapters)
    dims = ModelDims.from_config(loaded.model.config)
    spec = Subnet.load(subnet_file, dims)
    with console.status("extracting"):
        path = extract_checkpoint(loaded, spec, out, overwrite=overwrite)
    from .artifacts import dir_mib

    if gguf is not None:
        from .gguf_export import write_gguf
        from .models import embedded_gguf, load_model

        with console.status(f"writing {path / 'model.gguf'} ({gguf})"):
            write_gguf(load_model(str(path)).model, path / "model.gguf", embedded_gguf(), gguf)
    size_mb = dir_mib(path)
    console.print(f"wrote {path} ({spec.summary(dims)}, {size_mb:.1f} MiB); load it with "
                  f"AutoModelForCausalLM.from_pretrained('{path}')" + (" or llama.cpp (model.gguf)" if gguf else ""))


@app.command()
def evaluate(
    model: str = ModelOption,
    subnet_file: Optional[Path] = typer.Option(None, "--subnet", "-s", help="Evaluate this subnet via the in-place view."),
    tasks: str = typer.Option("wikitext2,arc_easy", help="Comma list of: wikitext2, wikitext2_valid, arc_easy, "
                                                        "arc_challenge, mmlu."),
    limit: Optional[int] = typer.Option(None, help="First N questions per MC task / N windows for perplexity."),
    seq_len: int = typer.Option(512, "--seq-len", help="Perplexity window length (non-overlapping windows)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $AMOEBA_DATA_DIR or ../shared/data)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the full JSON record here."),
    threads: Optional[int] = ThreadsOption,
    adapters: Optional[Path] = AdaptersOption,
) -> None:
    """Perplexity (WikiText-2) and multiple-choice accuracy (ARC, MMLU) of a model or subnet -> table + JSON."""
    _setup(threads)
    from .artifacts import write_json_atomic
    from .data import data_root
    from .subnet import ModelDims, Subnet
    from .tasks import evaluate_tasks, parse_tasks

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if seq_len < 2:
        raise UserError(f"--seq-len must be >= 2, got {seq_len}")
    selected = parse_tasks(tasks)
    root = data_root(data_dir)
    loaded = _load(model, adapters)
    spec = Subnet.load(subnet_file, ModelDims.from_config(loaded.model.config)) if subnet_file else None
    record = evaluate_tasks(loaded, selected, root, subnet=spec, limit=limit, seq_len=seq_len)
    console.print(results_table(record))
    if out:
        write_json_atomic(out, record)
        console.print(f"wrote {out}")


def results_table(record: dict) -> Table:
    title = record["model"]["name"] + (f" [{record['subnet']['summary']}]" if record["subnet"] else "")
    table = Table(title=title)
    for column in ("task", "metric", "value", "acc_norm", "n", "seconds", "tokens/s"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, r in record["tasks"].items():
        if "ppl" in r:
            table.add_row(name, f"ppl (seq {r['seq_len']})", f"{r['ppl']:.2f}", "", f"{r['scored_tokens']} tok",
                          f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}")
        else:
            table.add_row(name, "acc %", f"{r['acc']:.2f}", f"{r['acc_norm']:.2f}", f"{r['questions']} q",
                          f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}")
    return table


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Where every demo artifact is written."),
    target_ratio: float = typer.Option(0.6, "--target-ratio", help="Decode latency target, share of the full model."),
    trials: int = typer.Option(30, help="Search trials (and Pareto trials)."),
    limit: int = typer.Option(100, help="ARC-easy questions per model."),
    windows: int = typer.Option(8, help="WikiText-2 test windows (512 tokens) per model."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: ../shared/data)."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """The whole pipeline on the embedded model: strategy -> profile -> search -> extract -> measure -> Pareto plot."""
    _setup(threads)
    from .demo import run_demo

    run_demo(console, _load("default"), out, target_ratio, trials, limit=limit, windows=windows, data_dir=data_dir)


from . import cli_finetune  # noqa: E402
from . import cli_profile  # noqa: E402  (sub-commands register on `app`)

app.add_typer(cli_profile.profile_app, name="profile")
from . import cli_search  # noqa: E402

app.command("search")(cli_search.search_command)
app.command("finetune")(cli_finetune.finetune)
app.command("pareto")(cli_search.pareto_command)
cli_profile.plot_app.command("pareto")(cli_search.plot_pareto)
app.add_typer(cli_profile.plot_app, name="plot")
app.command("predict")(cli_profile.predict)


@app.command()
def flows() -> None:
    """List deployment flows and whether each is available here (and if not, why and how to get it)."""
    console.print(cli_profile.flows_table())


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
