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


def test_llama_cpp_runs_a_compensated_subnet_like_pytorch(tiny, tmp_path, tiny_data):
    """A FLAP-compensated subnet (o_proj/down_proj biases; the zero q/k/v/gate/up biases the config flags switch
    on are left out) is exported and llama.cpp computes the extracted checkpoint's logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from amoeba_search.data import read_text
    from amoeba_search.extract import extract
    from amoeba_search.models import load_model
    from amoeba_search.selection.calibration import text_calibration
    from amoeba_search.selection.width import width_section, width_subnet

    calibration = text_calibration(tiny.tokenizer, read_text(tiny_data / "wikitext2" / "valid.txt"), 4, 32)
    subnet = width_subnet(tiny.model, width_section(tiny.model, calibration), [0, 1, 3, 4], heads=3, mlp=24)
    assert subnet.bias is not None
    checkpoint = load_model(str(extract(tiny, subnet, tmp_path / "ckpt"))).model
    assert checkpoint.config.attention_bias and checkpoint.config.mlp_bias
    path = write_gguf(checkpoint, tmp_path / "m.gguf", None, "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
    ids = [5, 17, 99, 3, 42, 7]
    llm.eval(ids)
    with torch.no_grad():
        expected = checkpoint(torch.tensor([ids])).logits[0]
    for position in range(len(ids)):
        assert torch.allclose(torch.tensor(llm.scores[position]), expected[position], atol=1e-3)


@pytest.mark.embedded
def test_tokenizer_fields_are_read_once_per_file_version(tmp_path):
    """Profiling writes one GGUF per timed model: the source vocabulary is parsed once, and again only when the file
    changes."""
    import shutil

    from amoeba_search import gguf_export

    copy = shutil.copy(embedded_gguf(), tmp_path / "vocab.gguf")
    gguf_export._tokenizer_fields.cache_clear()
    assert gguf_export.gguf_vocab_size(copy) == gguf_export.gguf_vocab_size(copy) == 49152
    assert gguf_export._tokenizer_fields.cache_info().misses == 1
    shutil.copy(embedded_gguf(), copy)                       # a new version of the file (mtime)
    import os
    os.utime(copy, ns=(0, 0))
    assert gguf_export.gguf_vocab_size(copy) == 49152
    assert gguf_export._tokenizer_fields.cache_info().misses == 2
