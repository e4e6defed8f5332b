"""Perplexity on held-out text the full model writes itself. Measured (benchmarks/proxy_choice.py, shipped adapters
on): it ranks the heterogeneous search's candidates by held-out ARC-easy accuracy better than WikiText-2 valid
perplexity (Spearman -0.96 vs -0.88 over 43 candidates at 80% latency, -0.72 vs -0.67 at 65%; on one half of the
questions at 65% it is worse, -0.48 vs -0.61), and its picks score 0.9 and 2.4 points higher (within noise). Why it
can: it is the model's own distribution (WikiText-2 is `<unk>`-tokenized encyclopaedia text), it is what distilled
adapters learned to keep, and it needs no data beyond the instruction seeds. The text is one batch of `amoeba corpus`
samples with a seed the training corpus does not use, written by the full model without adapters (~70 s on 2 CPU
cores) once per model and instruction file into the user cache, where every later search and worker reads it. Its
token digest is part of the proxy's fingerprint, so stored values are reused only for the same text (sampling on
another CPU can write other text: studies shared across machines then keep separate values, never mixed ones)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ...data import read_training_texts, require_file
from ...errors import UserError
from ...finetune.corpus import HELD_OUT_SEED, CorpusSettings, generate_corpus
from ...models import LoadedModel, cache_root
from . import PROXIES
from .base import Proxy, perplexity_score

TEXT_SAMPLES = 64                              # one generation batch: ~8k tokens for a 49k-vocabulary chat model


def held_out_text(loaded: LoadedModel, seeds: Path) -> Path:
    """The held-out corpus file for this model and instruction file: read from the user cache, or written there
    whole (generated beside it, then renamed, so parallel workers never read a partial file)."""
    settings = CorpusSettings(samples=TEXT_SAMPLES, seed=HELD_OUT_SEED)
    key = json.dumps([loaded.fingerprint, asdict(settings), hashlib.sha256(seeds.read_bytes()).hexdigest()])
    path = cache_root() / "held_out_text" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            os.replace(generate_corpus(loaded, seeds, Path(tmp) / path.name, settings), path)
    return path


def held_out_windows(loaded: LoadedModel, data_dir: Path, samples: int = 16, seq_len: int = 256) -> torch.Tensor:
    """The first `samples` windows of `seq_len` tokens of the held-out text, (samples, seq_len): the documents
    joined with end-of-sequence tokens."""
    if samples < 1 or seq_len < 2:
        raise UserError(f"--proxy-samples must be >= 1 (got {samples}) and the window >= 2 tokens")
    seeds = require_file(data_dir / "instructions" / "alpaca_seed_tasks.jsonl", "instruction seeds")
    path = held_out_text(loaded, seeds)
    try:
        texts = read_training_texts(path)
    except UserError:
        texts = []
    if len(texts) != TEXT_SAMPLES:                  # only a damaged file: it is written whole or not at all
        raise UserError(f"the cached held-out text {path} is damaged (not {TEXT_SAMPLES} samples): delete it and it "
                        "is written again")
    tokenizer = loaded.tokenizer
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    if len(stream) < samples * seq_len:
        raise UserError(f"the held-out self-written text has {len(stream)} tokens, fewer than {samples} windows of "
                        f"{seq_len}: lower --proxy-samples")
    return torch.tensor(stream[:samples * seq_len]).view(samples, seq_len)


@PROXIES.register("self_ppl")
def self_text_proxy(loaded: LoadedModel, data_dir: Path, samples: int = 16, seq_len: int = 256) -> Proxy:
    """Perplexity of the first `samples` windows of `seq_len` tokens of held-out self-written text; lower is better."""
    ids = held_out_windows(loaded, data_dir, samples, seq_len)
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]
    return Proxy("self_ppl", "minimize", "ppl", {"data": "self-written", "corpus": {"samples": TEXT_SAMPLES,
                                                                                     "seed": HELD_OUT_SEED},
                                                 "samples": samples, "seq_len": seq_len, "tokens_sha256": digest},
                 perplexity_score(loaded, ids))
