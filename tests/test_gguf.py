"""GGUF export: the file llama.cpp reads holds the same network (round trip through transformers' GGUF loader)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from amoeba_search.extract import extract_model
from amoeba_search.gguf_export import permute_rotary, write_gguf
from amoeba_search.models import embedded_gguf
from amoeba_search.subnet import ModelDims, Subnet
import pytest


def test_permutation_interleaves_rotary_halves():
    rows = torch.arange(8).reshape(8, 1).numpy()          # 2 heads x head_dim 4: halves (0,1 | 2,3)
    assert permute_rotary(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.embedded
def test_gguf_round_trip_matches_pytorch(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    small = extract_model(tiny.model, Subnet.uniform(dims, [0, 2, 3], heads=3, mlp=24))
    path = write_gguf(small, tmp_path / "m.gguf", embedded_gguf(), "f32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    assert loaded.config.num_hidden_layers == 3 and loaded.config.num_attention_heads == 3
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, small(ids).logits, atol=1e-4)


@pytest.mark.embedded
def test_llama_cpp_runs_the_exported_subnet_like_pytorch(tiny, tmp_path):
    """llama.cpp itself (when installed) computes the same next-token logits from the exported f32 subnet."""
    llama_cpp = pytest.importorskip("llama_cpp")
    dims = ModelDims.from_config(tiny.model.config)
    small = extract_model(tiny.model, Subnet.uniform(dims, [0, 2, 3], heads=3, mlp=24))
    path = write_gguf(small, tmp_path / "m.gguf", None, "f32")          # placeholder vocabulary: ids only
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False,
                          type_k=0, type_v=0)                 # f32 KV cache (the default is f16)
    ids = [5, 17, 99, 3, 42, 7]
    llm.eval(ids)
    with torch.no_grad():
        expected = small(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(torch.tensor(llm.scores[len(ids) - 1]), expected, atol=1e-3)
