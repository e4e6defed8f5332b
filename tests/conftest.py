"""Shared fixtures: a tiny random LLaMA-architecture checkpoint (GQA, explicit head_dim) with a byte-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from amoeba_search.models import load_model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every UTF-8 byte is one token, so token counts are easy to reason about."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


def tiny_config(**overrides) -> LlamaConfig:
    # 6 query heads in 2 KV groups of 3; head_dim 16 so heads * head_dim (96) != hidden (72), as after head pruning.
    settings = dict(vocab_size=257, hidden_size=72, intermediate_size=48, num_hidden_layers=5, num_attention_heads=6,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=False)
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_tiny(path: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():  # larger-than-default weights so that layers and channels visibly matter
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root with the layout of ../shared/data, made up by the test."""
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext2").mkdir()
    text = " = Tiny = \n The quick brown fox jumps over the lazy dog . " * 40
    (root / "wikitext2" / "test.txt").write_text(text)
    (root / "wikitext2" / "valid.txt").write_text(text[::-1])
    (root / "arc").mkdir()
    questions = [("What color is the sky?", ["blue", "green", "a large red"], "A"),
                 ("Which is a fruit?", ["rock", "apple"], "B"),
                 ("Pick one", ["x", "yy", "zzz", "w"], "3")]
    for split in ("easy", "challenge"):
        with open(root / "arc" / f"arc_{split}_validation.jsonl", "w") as handle:
            for i, (q, texts, key) in enumerate(questions):
                labels = ["1", "2", "3", "4"][: len(texts)] if key.isdigit() else list("ABCD")[: len(texts)]
                handle.write(json.dumps({"id": f"q{i}", "question": q, "choices": {"text": texts, "label": labels},
                                         "answerKey": key}) + "\n")
    (root / "instructions").mkdir()
    with open(root / "instructions" / "alpaca_seed_tasks.jsonl", "w") as handle:
        for n in range(4):
            handle.write(json.dumps({"instruction": f"Count to {n + 1}.", "instances": [
                {"input": "", "output": " ".join(map(str, range(1, n + 2)))}]}) + "\n")
    (root / "mmlu").mkdir()
    with open(root / "mmlu" / "zero_shot_val.jsonl", "w") as handle:
        for answer in "ABCD":
            handle.write(json.dumps({"subject": "x", "input": "Q: 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:",
                                     "output": answer}) + "\n")
    return root
