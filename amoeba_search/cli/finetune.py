"""`amoeba finetune`: one set of SMoL adapters for every subnet of a strategy's space (sandwich sampling, in-place
distillation, loss-magnitude balancing); resumes from the newest checkpoint in --out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DataDirOption, DtypeOption, ModelOption, StrategyOption, ThreadsOption, check_output,
                     check_range, console, example, load, new_app, setup, strategy_path)
from ..errors import UserError
from ..finetune.corpus import CorpusSettings, corpus_seed, refuse_held_out

app = new_app("")


@app.command(epilog=example("amoeba finetune --steps 200 --out adapters",
                            "amoeba finetune --experts 4 --rank 8 --alpha 16 --out smol",
                            "amoeba finetune --teacher inplace --corpus none --out paper-recipe",
                            "amoeba finetune --strategy strategy.json --data my.jsonl --experts 1 --out lora",
                            "amoeba finetune --subnet best_subnet.json --init-from default --steps 300 --out mine"))
def finetune(
    strategy: Path = StrategyOption,
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Training data, repeatable: JSONL instruction "
                                                                   "records ({instruction, input, output}, Alpaca "
                                                                   "template), {text}, prompt-completion {input, "
                                                                   "output} records, or plain text. "
                                                                   "Default: the Alpaca seed tasks from --data-dir "
                                                                   "(WikiText-2 stays out: its test split is "
                                                                   "reported)."),
    corpus: str = typer.Option("auto", "--corpus", help="Distillation corpus the full model writes itself (see "
                                                        "`amoeba corpus`), added to --data: 'auto' = "
                                                        "OUT/corpus.jsonl, generated or resumed first; a path; or "
                                                        "'none'."),
    corpus_samples: int = typer.Option(CorpusSettings.samples, "--corpus-samples",
                                       help="Samples in a corpus generated here."),
    out: Path = typer.Option(Path("adapters"), "--out", "-o", help="Run dir: step-N/ checkpoints (adapters + router "
                                                                   "+ optimizer); an existing run resumes."),
    steps: int = typer.Option(200, help="Optimizer steps in all (the schedule spans them; a resumed run does the "
                                        "rest)."),
    teacher: str = typer.Option("frozen", help="frozen: every subnet distils the original model (adapters off); "
                                               "inplace: the largest subnet with adapters learns the data and "
                                               "teaches the rest (the paper's)."),
    subnets_per_step: int = typer.Option(4, "--subnets-per-step", help="K sandwich subnets per step: largest, "
                                                                        "smallest, K-2 random."),
    heterogeneous_per_step: int = typer.Option(0, "--heterogeneous-per-step", help="Of the K-2 random subnets, "
                                               "how many get a random shape per layer (removed, MLP-only, own heads "
                                               "and MLP width), as `search --space heterogeneous` hands them over; "
                                               "needs --experts 1."),
    heterogeneous_shapes: str = typer.Option("random", "--heterogeneous-shapes", help="How those are drawn: "
                                             "random (each layer removed or at its own shape at random) or solver "
                                             "(the exact block solver's optimum at 50-90% of the full model's "
                                             "latency on every known profile: what users deploy; needs a strategy "
                                             "with block scores)."),
    batch_size: int = typer.Option(2, "--batch-size", help="Sequences per step."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per sequence."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (paper on GPUs: 2e-4 for 10K steps)."),
    schedule: str = typer.Option("cosine", help="Learning-rate decay after warmup: constant, constant_with_warmup, "
                                                "linear or cosine (transformers.get_scheduler)."),
    warmup_pct: float = typer.Option(5.0, "--warmup-pct", help="Share of the steps warming up, %."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping norm; 0 = none."),
    experts: int = typer.Option(1, help="LoRA experts per adapted linear: 1 = one plain LoRA shared by every "
                                        "subnet (the measured default: benchmarks/results/finetune.md); 4 with "
                                        "--rank 8 --alpha 16 = SMoL, the paper's shape-routed mixture."),
    top_k: int = typer.Option(2, "--top-k", help="Experts the shape router keeps per subnet (SMoL)."),
    rank: int = typer.Option(16, help="LoRA rank per expert."),
    alpha: float = typer.Option(32.0, help="LoRA alpha (update scaled by alpha / rank)."),
    balance: bool = typer.Option(True, help="Loss-magnitude balancing of the distilled subnets' losses."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations "
                                                                                        "(less memory, slower)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16 (bf16 also on CPUs "
                                                                        "with AVX512-BF16/AMX)."),
    seed: int = typer.Option(0, help="Seeds subnet sampling, data windows and router noise (per step)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from trained adapters (a dir, or "
                                                                       "'default': the shipped ones) of the same "
                                                                       "model, strategy and adapter settings; fresh "
                                                                       "optimizer and schedule."),
    subnet: Optional[Path] = typer.Option(None, "--subnet", help="Fine-tune for this one subnet (a subnet file, e.g. "
                                                                 "`amoeba search`'s best_subnet.json): every step "
                                                                 "distils it alone (K = 1), so a CPU budget goes "
                                                                 "to the subnet you deploy; the adapters then serve "
                                                                 "that subnet only."),
    model: str = ModelOption,
    dtype: str = DtypeOption,
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Fine-tune one set of LoRA adapters (or SMoL experts) so every subnet recovers at once (or, with --subnet,
    the one you deploy); merge one with `amoeba extract --adapters`."""
    setup(threads)
    from ..data import data_root, read_training_texts
    from ..finetune.recipe import TrainConfig, Trainer, slow_precision_warning
    from ..finetune.smol import AdapterConfig
    from ..selection.strategy import Strategy

    for name, value in (("--steps", steps), ("--subnets-per-step", subnets_per_step), ("--batch-size", batch_size),
                        ("--experts", experts), ("--top-k", top_k), ("--rank", rank),
                        ("--checkpoint-every", checkpoint_every), ("--corpus-samples", corpus_samples)):
        check_range(name, value, 1)
    check_range("--seq-len", seq_len, 2)
    check_range("--lr", lr, 0, low_open=True)
    check_range("--alpha", alpha, 0, low_open=True)
    check_output(out, directory=True)
    if subnet is not None:
        if not subnet.is_file():
            raise UserError(f"--subnet {subnet}: no such file; write one with `amoeba search` or `amoeba subnet`")
        if heterogeneous_per_step:
            raise UserError("--subnet trains that one subnet: drop --heterogeneous-per-step")
        subnets_per_step = 1
    from ..models import torch_dtype

    torch_dtype(dtype)                         # before the data lookup: option values first
    config = TrainConfig(steps=steps, subnets_per_step=subnets_per_step, heterogeneous_per_step=heterogeneous_per_step,
                         heterogeneous_shapes=heterogeneous_shapes, batch_size=batch_size, seq_len=seq_len,
                         lr=lr, balance=balance, teacher=teacher, schedule=schedule, warmup_pct=warmup_pct,
                         max_grad_norm=max_grad_norm, seed=seed, checkpoint_every=checkpoint_every,
                         gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision)
    adapter = AdapterConfig(experts=experts, top_k=top_k if experts > 1 else 1, rank=rank, alpha=alpha)
    import torch

    if warning := slow_precision_warning(mixed_precision, torch.cuda.is_available()):
        console.print(f"[yellow]warning:[/] {warning}")
    root = data_root(data_dir)
    files = list(data or default_training_files(root))
    corpus_path = None if corpus == "none" else (out / "corpus.jsonl" if corpus == "auto" else Path(corpus))
    if corpus_path is not None:
        check_output(corpus_path)
    for file in [*files, *([corpus_path] if corpus_path is not None else [])]:
        refuse_held_out(corpus_seed(file), file)
    texts = {str(file): read_training_texts(file) for file in files}      # bad data fails before any work
    settings = CorpusSettings(samples=corpus_samples)
    instructions = instruction_file(root) if corpus_path is not None else None
    path = strategy_path(strategy)
    strategy_obj = Strategy.load(path)
    loaded = load(model, dtype=dtype)
    if corpus_path is not None:
        from ..finetune.corpus import generate_corpus

        generate_corpus(loaded, instructions, corpus_path, settings)
        texts[str(corpus_path)] = read_training_texts(corpus_path)
    if init_from is not None:
        from ..finetune.checkpoint import shipped_adapters_for

        init_from = shipped_adapters_for(loaded) if str(init_from) == "default" else Path(init_from)
    target = None
    if subnet is not None:
        from ..subnet import ModelDims, Subnet

        target = Subnet.load(subnet, ModelDims.from_config(loaded.model.config), loaded.fingerprint)
    trainer = Trainer(loaded, strategy_obj, path, texts, out, config, adapter, init_from=init_from, target=target)
    if trainer.record["step"]:
        console.print(f"resuming {out} at step {trainer.record['step']}/{steps}")
    space = trainer.space
    what = (f"one subnet ({target.summary(trainer.dims)})" if target is not None else
            f"{space.size} subnets ({len(space.depths)} depths x {len(space.heads)} heads x {len(space.mlp)} MLP "
            "widths)")
    console.print(f"fine-tuning {sum(p.numel() for p in trainer.adapters.parameters()) / 1e6:.2f} M adapter "
                  f"parameters for {what} on {trainer.record['data']['tokens']} tokens, teacher {teacher}")
    record = trainer.train()
    console.print(f"done: {record['step']} steps in {record['seconds'] / 60:.1f} min; adapters in {out}; evaluate a "
                  f"subnet with `amoeba evaluate --adapters {out} --subnet s.json`, deploy it with "
                  f"`amoeba extract --adapters {out} --subnet s.json --out ckpt`")


@app.command(epilog=example("amoeba corpus --out corpus.jsonl",
                            "amoeba corpus --samples 2000 --max-new-tokens 192 --out big.jsonl"))
def corpus(
    out: Path = typer.Option(Path("corpus.jsonl"), "--out", "-o", help="JSONL file: a settings header, then one "
                                                                       "sample per line; an unfinished one resumes."),
    samples: int = typer.Option(CorpusSettings.samples, help="Samples to generate."),
    max_new_tokens: int = typer.Option(CorpusSettings.max_new_tokens, "--max-new-tokens", help="Tokens per sample."),
    temperature: float = typer.Option(CorpusSettings.temperature, help="Sampling temperature."),
    top_k: int = typer.Option(CorpusSettings.top_k, "--top-k", help="Sample among the k likeliest tokens."),
    batch_size: int = typer.Option(CorpusSettings.batch_size, "--batch-size", help="Prompts generated together."),
    seed: int = typer.Option(CorpusSettings.seed, help="Seeds prompt choice and sampling (per batch)."),
    model: str = ModelOption,
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Write a distillation corpus with the full model itself: answers to the instruction seeds (chat template) and
    continuations of plain-text openings; `amoeba finetune --corpus FILE` trains on it."""
    setup(threads)
    from ..data import data_root

    for name, value in (("--samples", samples), ("--max-new-tokens", max_new_tokens), ("--top-k", top_k),
                        ("--batch-size", batch_size)):
        check_range(name, value, 1)
    check_range("--temperature", temperature, 0, low_open=True)
    check_output(out)
    refuse_held_out(seed)
    settings = CorpusSettings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                              batch_size=batch_size, seed=seed)
    root = data_root(data_dir)
    instructions = instruction_file(root)
    loaded = load(model)
    from ..finetune.corpus import generate_corpus

    generate_corpus(loaded, instructions, out, settings)
    console.print(f"corpus in {out}: train on it with `amoeba finetune --corpus {out}`")


def instruction_file(root: Path) -> Path:
    path = root / "instructions" / "alpaca_seed_tasks.jsonl"
    if not path.is_file():
        raise UserError(f"instruction seeds not found at {path}: pass --data-dir")
    return path


def default_training_files(root: Path) -> list[Path]:
    return [instruction_file(root)]


@app.command("export-adapters", epilog=example("amoeba export-adapters adapters --out shipped/smollm2-135m"))
def export_adapters_command(
    run: Path = typer.Argument(..., help="A finetune run dir (its newest checkpoint) or a checkpoint dir."),
    out: Path = typer.Option(..., "--out", "-o", help="New dir: adapters.safetensors + adapters.json."),
    dtype: str = typer.Option("bfloat16", help="Weight dtype: bfloat16 (half the size), float16 or float32."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Adapters to ship or share: the newest checkpoint's weights in a small dtype and its training record, without
    optimizer state; `--adapters OUT` loads them anywhere a checkpoint loads."""
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"--dtype {dtype!r}: choose bfloat16, float16 or float32")
    check_output(out, directory=True)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: pass --overwrite or another --out")
    import torch

    from ..finetune.checkpoint import export_adapters

    export_adapters(run, out, getattr(torch, dtype))
    size_mib = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    console.print(f"wrote {out} ({size_mib:.1f} MiB); use it with `--adapters {out}`")
