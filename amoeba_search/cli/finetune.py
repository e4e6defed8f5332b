"""`amoeba finetune`: one set of SMoL adapters for every subnet of a strategy's space (sandwich sampling, in-place
distillation, loss-magnitude balancing); resumes from the newest checkpoint in --out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DataDirOption, ModelOption, StrategyOption, ThreadsOption, check_output, check_range, console,
                     example, load, new_app, setup, strategy_path)
from ..errors import UserError

app = new_app("")


@app.command(epilog=example("amoeba finetune --steps 200 --out adapters",
                            "amoeba finetune --strategy strategy.json --data my.jsonl --experts 1 --out lora"))
def finetune(
    strategy: Path = StrategyOption,
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Training data, repeatable: JSONL instruction "
                                                                   "records ({instruction, input, output}, Alpaca "
                                                                   "template) or plain text. Default: the Alpaca "
                                                                   "seed tasks + WikiText-2 valid from --data-dir."),
    out: Path = typer.Option(Path("adapters"), "--out", "-o", help="Run dir: step-N/ checkpoints (adapters + router "
                                                                   "+ optimizer); an existing run resumes."),
    steps: int = typer.Option(200, help="Optimizer steps in all (a resumed run does only the rest)."),
    subnets_per_step: int = typer.Option(4, "--subnets-per-step", help="K sandwich subnets per step: largest, "
                                                                        "smallest, K-2 random."),
    batch_size: int = typer.Option(2, "--batch-size", help="Sequences per step."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per sequence."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate, constant (paper on GPUs: 2e-4 for 10K steps)."),
    experts: int = typer.Option(4, help="LoRA experts per adapted linear; 1 = one plain shared LoRA (no router)."),
    top_k: int = typer.Option(2, "--top-k", help="Experts the shape router keeps per subnet."),
    rank: int = typer.Option(8, help="LoRA rank per expert."),
    alpha: float = typer.Option(16.0, help="LoRA alpha (update scaled by alpha / rank)."),
    balance: bool = typer.Option(True, help="Loss-magnitude balancing of the distilled subnets' losses."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="Steps between checkpoints."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations "
                                                                                        "(less memory, slower)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16 (GPU)."),
    seed: int = typer.Option(0, help="Seeds subnet sampling, data windows and router noise (per step)."),
    model: str = ModelOption,
    data_dir: Optional[Path] = DataDirOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Fine-tune shape-aware LoRA experts so every subnet recovers at once; merge one with `amoeba extract --adapters`."""
    setup(threads)
    from ..data import data_root, read_training_texts
    from ..finetune.recipe import TrainConfig, Trainer
    from ..finetune.smol import AdapterConfig
    from ..selection.strategy import Strategy

    for name, value in (("--steps", steps), ("--subnets-per-step", subnets_per_step), ("--batch-size", batch_size),
                        ("--experts", experts), ("--top-k", top_k), ("--rank", rank),
                        ("--checkpoint-every", checkpoint_every)):
        check_range(name, value, 1)
    check_range("--seq-len", seq_len, 2)
    check_range("--lr", lr, 0, low_open=True)
    check_range("--alpha", alpha, 0, low_open=True)
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise UserError(f"--mixed-precision {mixed_precision!r}: choose no, bf16 or fp16")
    check_output(out, directory=True)
    config = TrainConfig(steps=steps, subnets_per_step=subnets_per_step, batch_size=batch_size, seq_len=seq_len,
                         lr=lr, balance=balance, seed=seed, checkpoint_every=checkpoint_every,
                         gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision)
    adapter = AdapterConfig(experts=experts, top_k=top_k if experts > 1 else 1, rank=rank, alpha=alpha)
    files = data or default_training_files(data_root(data_dir))
    texts = {str(path): read_training_texts(path) for path in files}
    path = strategy_path(strategy)
    strategy_obj = Strategy.load(path)
    loaded = load(model)
    trainer = Trainer(loaded, strategy_obj, path, texts, out, config, adapter)
    if trainer.record["step"]:
        console.print(f"resuming {out} at step {trainer.record['step']}/{steps}")
    space = trainer.space
    console.print(f"fine-tuning {sum(p.numel() for p in trainer.adapters.parameters()) / 1e6:.2f} M adapter "
                  f"parameters over {space.size} subnets ({len(space.depths)} depths x {len(space.heads)} heads x "
                  f"{len(space.mlp)} MLP widths) on {trainer.record['data']['tokens']} tokens")
    record = trainer.train()
    console.print(f"done: {record['step']} steps in {record['seconds'] / 60:.1f} min; adapters in {out}; evaluate a "
                  f"subnet with `amoeba evaluate --adapters {out} --subnet s.json`, deploy it with "
                  f"`amoeba extract --adapters {out} --subnet s.json --out ckpt`")


def default_training_files(root: Path) -> list[Path]:
    files = [root / "instructions" / "alpaca_seed_tasks.jsonl", root / "wikitext2" / "valid.txt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"default training data not found ({', '.join(missing)}): pass --data FILE or --data-dir")
    return files
