"""Write an extracted (dense) LLaMA-family checkpoint as a GGUF file that llama.cpp runs, with the tokenizer
metadata copied from the embedded model's own GGUF. Tensor names and the rotary permutation of q/k follow
llama.cpp's convert_hf_to_gguf.py; the head size is written explicitly (key/value length), because after head
pruning heads x head_dim no longer equals the hidden size."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:                       # torch is imported where tensors are read, so `TYPES` is cheap to import
    from transformers import PreTrainedModel

TYPES = ("f32", "f16", "q8_0", "q4_1")
_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.down_proj.bias": "ffn_down.bias",
}
# Biases a LLaMA config switches on together with the ones FLAP compensation needs (attention_bias turns on
# q/k/v/o, mlp_bias gate/up/down). Extraction leaves them zero; a zero bias is no bias, so it is not written.
_ZERO_ONLY = {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "mlp.gate_proj.bias",
              "mlp.up_proj.bias"}


def check_gguf(config) -> None:
    """Refuse, before any work, a model this writer cannot express exactly in llama.cpp: other architectures than
    llama (their tensor layouts, norms and metadata differ), rope scaling (llama.cpp needs the rope_freqs factors
    this writer does not compute), q/k/v biases llama's GGUF has no place for."""
    from .families.base import family_of

    family = family_of(config)
    fix = "convert the extracted checkpoint dir with llama.cpp's convert_hf_to_gguf.py instead"
    if family.gguf_arch != "llama":
        raise UserError(f"GGUF: this writer writes llama-architecture models only, not {family.model_type} "
                        f"({family.gguf_arch or 'no'} architecture in llama.cpp): {fix}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF: rope scaling {rope.get('rope_type')!r} is not written by this writer (llama.cpp would "
                        f"run unscaled rope, other logits): {fix}")


def effective_window(config) -> int | None:
    """The sliding window a Mistral / Qwen2 / Phi-3 config really applies (None: none, or one not shorter than its
    context)."""
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None
    window = getattr(config, "sliding_window", None)
    return window if window and window < config.max_position_embeddings else None


def gguf_context_length(config) -> int:
    """The longest context llama.cpp may run the model at and compute what transformers computes: a llama-arch
    GGUF has no sliding window, so a model with one (Mistral) is capped at its window."""
    return effective_window(config) or config.max_position_embeddings


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF stores q/k rows as two halves per head; GGUF interleaves them (convert_hf_to_gguf's permute)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def gguf_tensors(model: PreTrainedModel) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in PyTorch layout) for every tensor llama.cpp needs."""
    import torch

    from .layered import per_layer_heads

    config = model.config
    heads, kv_heads, channels = per_layer_heads(config)
    out = []
    for key, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float32).numpy()
        if key == "model.embed_tokens.weight":
            out.append(("token_embd.weight", array))
        elif key == "model.norm.weight":
            out.append(("output_norm.weight", array))
        elif key == "lm_head.weight":
            if not getattr(config, "tie_word_embeddings", False):
                out.append(("output.weight", array))
        elif key.startswith("model.layers."):
            index, rest = key[len("model.layers."):].split(".", 1)
            if rest in _ZERO_ONLY and not array.any():
                continue
            # llama.cpp's attention-free (FFN-free) layers have no attention (FFN) norm: it would be an extra tensor
            if (rest == "input_layernorm.weight" and not heads[int(index)]) or (
                    rest == "post_attention_layernorm.weight" and not channels[int(index)]):
                continue
            if rest not in _BLOCK_NAMES:
                raise UserError(f"cannot write {key} to GGUF: only LLaMA-style blocks are supported")
            if rest == "self_attn.q_proj.weight":
                array = permute_rotary(array, heads[int(index)])
            elif rest == "self_attn.k_proj.weight":
                array = permute_rotary(array, kv_heads[int(index)])
            out.append((f"blk.{index}.{_BLOCK_NAMES[rest]}", array))
        elif not key.endswith("rotary_emb.inv_freq"):
            raise UserError(f"cannot write {key} to GGUF: only LLaMA-family decoders are supported")
    return out


@functools.lru_cache(maxsize=4)
def _tokenizer_fields(path: str, mtime_ns: int, size: int) -> tuple:
    """The `tokenizer.*` fields of a GGUF as (key, value, type, sub-type), read once per file version: parsing the
    embedded model's 49k-token vocabulary takes ~3 s, and profiling writes one GGUF per timed model."""
    from gguf import GGUFReader

    fields = []
    for key, field in GGUFReader(path).fields.items():
        if key.startswith("tokenizer."):
            fields.append((key, field.contents(), field.types[0], field.types[1] if len(field.types) > 1 else None))
    return tuple(fields)


def _read_tokenizer(path: Path) -> tuple:
    stat = os.stat(path)
    return _tokenizer_fields(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def _copy_tokenizer(writer, source: Path) -> None:
    for key, value, value_type, sub_type in _read_tokenizer(source):
        writer.add_key_value(key, value, value_type, sub_type)


def gguf_vocab_size(path: Path) -> int:
    return len(next(value for key, value, _, _ in _read_tokenizer(path) if key == "tokenizer.ggml.tokens"))


def _placeholder_tokenizer(writer, vocab_size: int) -> None:
    """A SentencePiece-style vocabulary of opaque tokens <unk>, <s>, </s>, <t3>...: enough for llama.cpp to run
    token ids (latency profiling of a model whose own tokenizer is not in GGUF form), useless for text."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types([2, 3, 3] + [1] * (vocab_size - 3))     # unknown, control, control, normal...
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def write_gguf(model: PreTrainedModel, out: str | os.PathLike, tokenizer_gguf: Path | None,
               weight_type: str = "q4_1", name: str = "amoeba-subnet", architecture: str | None = None) -> Path:
    """Write the model as GGUF: 1-D tensors in f32, matrices in `weight_type` (f32, f16, q8_0, q4_1; token
    embedding in q8_0 when quantising, as llama.cpp's own Q4_1 files do). Atomic: temp file, then rename.
    architecture: llama.cpp's "llama" (uniform widths only) or "deci" (per-layer arrays); default: llama when
    every layer has the same shape, else deci.
    tokenizer_gguf=None writes a placeholder vocabulary (timing only)."""
    import gguf

    if weight_type not in TYPES:
        raise UserError(f"GGUF weight type {weight_type!r}: choose from {', '.join(TYPES)}")
    config = model.config
    check_gguf(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    from .layered import per_layer_heads

    heads, kv_heads, channels = per_layer_heads(config)
    if not heads[0]:
        raise UserError("GGUF: llama.cpp reads the attention head size from the first layer, which this subnet makes "
                        "MLP-only: keep attention in the first kept layer (heterogeneous search does)")
    if not all(channels):
        raise UserError("GGUF: llama.cpp's deci architecture drops an FFN-free layer entirely (its attention output "
                        "too), so attention-only layers cannot be written exactly: keep the MLP in every layer "
                        "(attention-free, MLP-only layers are fine)")
    uniform = len(set(zip(heads, kv_heads, channels))) == 1
    # Per-layer widths: llama.cpp's `deci` architecture (Nemotron-51B's) reads head counts and FFN widths as
    # per-layer arrays and sizes each layer's tensors from them; tensor names and rope are llama's.
    architecture = architecture or ("llama" if uniform else "deci")
    if architecture not in ("llama", "deci") or (architecture == "llama" and not uniform):
        raise UserError(f"GGUF architecture {architecture!r}: llama (uniform widths) or deci (any widths)")
    per_layer = architecture == "deci"
    writer = gguf.GGUFWriter(str(tmp), architecture)
    writer.add_name(name)
    writer.add_context_length(gguf_context_length(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(channels if per_layer else channels[0])
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv_heads if per_layer else kv_heads[0])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7, "q4_1": 3}[weight_type])
    if tokenizer_gguf is None:
        _placeholder_tokenizer(writer, config.vocab_size)
    else:
        _copy_tokenizer(writer, tokenizer_gguf)
    for tensor_name, array in gguf_tensors(model):
        if array.ndim == 1 or weight_type == "f32":
            writer.add_tensor(tensor_name, array.astype(np.float32))
        elif weight_type == "f16" or array.shape[-1] % 32:
            # quantised blocks hold 32 weights of a row; other rows stay f16, as llama.cpp's converter does
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0 if weight_type == "q8_0" or tensor_name == "token_embd.weight" \
                else gguf.GGMLQuantizationType.Q4_1
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out
