"""Batched scoring: WikiText perplexity over non-overlapping windows, multiple-choice log-likelihood with a shared context."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import MCItem
from .errors import UserError

HEAD_CHUNK = 1024  # positions per LM-head chunk: bounds the (positions, vocab) logits tensor


def head_logprobs(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities (n, V) for (n, D) final hidden states: the LM head and the model's final-logit
    softcapping (Gemma 2: logits = cap * tanh(logits / cap)), as its own forward applies them."""
    logits = model.get_output_embeddings()(hidden).float()                     # (n, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)


def token_logprobs(model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for (N, D) hidden states, applying the LM head only where a prediction is scored, in chunks
    that bound the (positions, vocab) logits tensor."""
    out = torch.empty(len(targets), dtype=torch.float32)
    for start in range(0, len(targets), HEAD_CHUNK):
        logprobs = head_logprobs(model, hidden[start:start + HEAD_CHUNK])
        out[start:start + HEAD_CHUNK] = logprobs.gather(1, targets[start:start + HEAD_CHUNK, None]).squeeze(1).cpu()
    return out


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int = 512,
               max_windows: int | None = None, batch_size: int = 4, progress: bool = True) -> dict:
    """exp(mean NLL) over non-overlapping seq_len windows; each window's first token is context only."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    n_windows = len(ids) // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise UserError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}: lower --seq-len or use "
                        "a longer text")
    windows = ids[: n_windows * seq_len].view(n_windows, seq_len)
    device, start_time, nll = _device(model), time.perf_counter(), 0.0
    for start in tqdm(range(0, n_windows, batch_size), desc="perplexity", unit="batch", disable=not progress,
                      leave=False):
        batch = windows[start:start + batch_size].to(device)                      # (B, T)
        hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state  # (B, T, D)
        scored = hidden[:, :-1].reshape(-1, hidden.shape[-1])                   # predict tokens 1..T-1
        nll -= token_logprobs(model, scored, batch[:, 1:].reshape(-1)).double().sum().item()
    seconds = time.perf_counter() - start_time
    scored_tokens = n_windows * (seq_len - 1)
    return {"ppl": math.exp(nll / scored_tokens), "nll_per_token": nll / scored_tokens, "seq_len": seq_len,
            "windows": n_windows, "scored_tokens": scored_tokens, "seconds": seconds,
            "tokens_per_s": n_windows * seq_len / seconds}


@dataclass
class PackedQuestion:
    """One question packed as context + every continuation, each continuation attending to the context only."""

    item_index: int
    tokens: list[int]
    segments: list[int]                 # 0 = context, i + 1 = continuation i
    positions: list[int]
    predictions: list[list[tuple[int, int]]] = field(default_factory=list)  # per choice: (position, target)


def _encode(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; continuation = whole[len(context):]."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


def pack_question(tokenizer: PreTrainedTokenizerBase, index: int, item: MCItem) -> PackedQuestion:
    context_ids: list[int] | None = None
    continuations = []
    for continuation in item.continuations:
        ctx, cont = _encode(tokenizer, item.context, continuation)
        if context_ids is not None and ctx != context_ids:
            raise ValueError("context tokenization differs between choices")
        context_ids = ctx
        continuations.append(cont)
    if not context_ids:
        raise ValueError(f"question {index} has an empty context; multiple-choice scoring needs one")
    n_ctx = len(context_ids)
    packed = PackedQuestion(index, list(context_ids), [0] * n_ctx, list(range(n_ctx)))
    for choice, cont in enumerate(continuations):
        offset = len(packed.tokens)
        # The first continuation token is predicted from the last context token, the rest from their predecessor.
        sources = [n_ctx - 1] + [offset + j for j in range(len(cont) - 1)]
        packed.predictions.append(list(zip(sources, cont)))
        packed.tokens += cont
        packed.segments += [choice + 1] * len(cont)
        packed.positions += list(range(n_ctx, n_ctx + len(cont)))
    return packed


def _batches(packed: list[PackedQuestion], max_batch_tokens: int) -> list[list[PackedQuestion]]:
    """Group questions of similar length so that batch_size * longest <= max_batch_tokens."""
    order = sorted(packed, key=lambda p: len(p.tokens), reverse=True)
    batches, current = [], []
    for item in order:
        if current and (len(current) + 1) * len(current[0].tokens) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


def packed_inputs(batch: list[PackedQuestion], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """input_ids, position_ids and the block attention mask (B, 1, T, T) for a batch of packed questions."""
    length = max(len(p.tokens) for p in batch)
    tokens = torch.zeros(len(batch), length, dtype=torch.long)
    positions = torch.zeros(len(batch), length, dtype=torch.long)
    segments = torch.full((len(batch), length), -1, dtype=torch.long)            # -1 = padding
    for row, p in enumerate(batch):
        n = len(p.tokens)
        tokens[row, :n] = torch.tensor(p.tokens)
        positions[row, :n] = torch.tensor(p.positions)
        segments[row, :n] = torch.tensor(p.segments)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query_seg, key_seg = segments[:, :, None], segments[:, None, :]                # (B, T, 1), (B, 1, T)
    allowed = causal & ((key_seg == 0) | (key_seg == query_seg))                  # (B, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return {"input_ids": tokens, "position_ids": positions, "attention_mask": mask}


def choice_loglikelihoods(model: PreTrainedModel, hidden: torch.Tensor, batch: list[PackedQuestion]) -> list[list[float]]:
    """Sum of log p(continuation token) per choice, from the final hidden states of a packed batch."""
    rows, cols, targets, owners = [], [], [], []
    for row, p in enumerate(batch):
        for choice, preds in enumerate(p.predictions):
            for source, target in preds:
                rows.append(row), cols.append(source), targets.append(target), owners.append((row, choice))
    logprobs = token_logprobs(model, hidden[torch.tensor(rows), torch.tensor(cols)],
                              torch.tensor(targets).to(hidden.device))
    sums = [[0.0] * len(p.predictions) for p in batch]
    for (row, choice), value in zip(owners, logprobs.tolist()):
        sums[row][choice] += value
    return sums


def _forward_packed(model: PreTrainedModel, batch: list[PackedQuestion]) -> list[list[float]]:
    """One forward for a batch of packed questions; returns the log-likelihood of every continuation."""
    device = _device(model)
    inputs = {k: v.to(device) for k, v in packed_inputs(batch, model.dtype).items()}
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
    return choice_loglikelihoods(model, hidden, batch)


def mean_stderr_pct(outcomes: Sequence[bool]) -> float:
    """Standard error of a mean of 0/1 outcomes, in points, as lm-evaluation-harness computes it (sample standard
    deviation / sqrt(n))."""
    n = len(outcomes)
    if n < 2:
        return float("nan")
    p = sum(outcomes) / n
    return 100.0 * math.sqrt(p * (1 - p) / (n - 1))


def encode_outcomes(correct: Sequence[bool]) -> str:
    """Per-question outcomes as a compact 0/1 string, as evaluation records keep them for paired comparisons."""
    return "".join("1" if c else "0" for c in correct)


def decode_outcomes(text: str) -> list[bool]:
    return [c == "1" for c in text]


def paired_difference_pct(reference: Sequence[bool], other: Sequence[bool]) -> tuple[float, float]:
    """(mean of other - reference, its standard error), in points, over the same questions. Why paired: two models
    answer most questions alike, so the error of their difference is far below the ~sqrt(2) x stderr of two
    independent scores (measured: 1.2 against 3.0 points for two sets of adapters on one subnet, 570 questions)."""
    if len(reference) != len(other) or len(reference) < 2:
        raise ValueError("a paired difference needs the same questions, at least 2")
    diffs = [int(b) - int(a) for a, b in zip(reference, other)]
    return 100.0 * sum(diffs) / len(diffs), 100.0 * _stderr_of_mean(diffs)


def retained_ratio(full: Sequence[bool], subnet: Sequence[bool], chance_pct: float) -> tuple[float, float]:
    """(retained above-chance accuracy (acc_subnet - chance) / (acc_full - chance), its standard error) over the same
    questions. The ratio of two means: by the delta method its error is sd(y_i - R x_i) / (sqrt(n) mean(x)) with
    y_i, x_i the subnet's and the full model's per-question outcome minus chance, so what the two models share
    (most answers) cancels."""
    if len(full) != len(subnet) or len(full) < 2:
        raise ValueError("a retained ratio needs the same questions, at least 2")
    c = chance_pct / 100.0
    x = [int(a) - c for a in full]
    y = [int(b) - c for b in subnet]
    n, mean_x = len(x), sum(x) / len(x)
    if mean_x <= 0:
        raise ValueError("the full model is at or below chance: nothing to retain")
    ratio = sum(y) / n / mean_x
    return ratio, _stderr_of_mean([b - ratio * a for a, b in zip(x, y)]) / mean_x


def _stderr_of_mean(values: Sequence[float]) -> float:
    """Sample standard deviation / sqrt(n)."""
    n, mean = len(values), sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def near_chance(result: dict, metric: str = "acc") -> bool:
    """True when a multiple-choice score is within 2 standard errors of guessing: it says nothing about the model."""
    return result[metric] - result["chance_acc"] < 2 * result[f"{metric}_stderr"]


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index wins ties, like numpy


@torch.inference_mode()
def multiple_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem],
                    max_batch_tokens: int = 2048, progress: bool = True) -> dict:
    """acc and acc_norm (log-likelihood / choice length in characters) as lm-evaluation-harness defines them, with
    the per-question log-likelihoods and outcomes (`correct`, `correct_norm`) for paired comparisons."""
    start_time = time.perf_counter()
    packed = [pack_question(tokenizer, i, item) for i, item in enumerate(items)]
    loglikelihoods: list[list[float]] = [[] for _ in items]
    batches = _batches(packed, max_batch_tokens)
    with tqdm(total=len(items), desc="multiple choice", unit="q", disable=not progress, leave=False) as bar:
        for batch in batches:
            for p, sums in zip(batch, _forward_packed(model, batch)):
                loglikelihoods[p.item_index] = sums
            bar.update(len(batch))
    correct = [argmax(ll) == item.gold for ll, item in zip(loglikelihoods, items)]
    correct_norm = [argmax([v / n for v, n in zip(ll, item.choice_lengths)]) == item.gold
                    for ll, item in zip(loglikelihoods, items)]
    seconds = time.perf_counter() - start_time
    chance = 100.0 * sum(1 / len(item.continuations) for item in items) / len(items)
    return {"acc": 100.0 * sum(correct) / len(items), "acc_stderr": mean_stderr_pct(correct),
            "acc_norm": 100.0 * sum(correct_norm) / len(items), "acc_norm_stderr": mean_stderr_pct(correct_norm),
            "chance_acc": chance, "questions": len(items), "choices": sum(len(i.continuations) for i in items),
            "tokens": sum(len(p.tokens) for p in packed), "seconds": seconds,
            "questions_per_s": len(items) / seconds, "tokens_per_s": sum(len(p.tokens) for p in packed) / seconds,
            "loglikelihoods": loglikelihoods, "correct": correct, "correct_norm": correct_norm}
