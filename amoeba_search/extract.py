"""Turn a subnet into a real, physically smaller dense HF checkpoint that plain transformers loads."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .artifacts import atomic_directory, write_json_atomic
from .errors import UserError
from .models import LoadedModel
from .subnet import ModelDims, Subnet
from .view import decoder_layers, expand_blocks

SUBNET_FILE = "amoeba_subnet.json"
_LAYER_KEY = re.compile(r"^(?P<prefix>.*\blayers)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def subnet_config(config, subnet: Subnet):
    """A standard config for the subnet; per-layer widths have no standard config field, so they are refused."""
    dims = ModelDims.from_config(config)
    shape = subnet.uniform_shape(dims)
    if shape is None:
        raise UserError("this subnet has different widths per layer, which a standard transformers config cannot "
                        "express; extract a uniform-width subnet (per-layer widths work with the in-place view)")
    heads, kv_heads, channels = shape
    if config.hidden_size % heads:
        raise UserError(f"heads: transformers' {type(config).__name__} requires hidden_size ({config.hidden_size}) to be "
                        f"divisible by num_attention_heads ({heads}); keep a head count that divides it")
    new = config.__class__.from_dict(config.to_dict())
    for attr in ("quantization_config",):
        if hasattr(new, attr):
            delattr(new, attr)
    new.num_hidden_layers = len(subnet.layers)
    new.num_attention_heads = heads
    new.num_key_value_heads = kv_heads
    new.head_dim = dims.head_dim  # explicit: heads * head_dim no longer equals hidden_size
    new.intermediate_size = channels
    if subnet.bias is not None:  # FLAP compensation lives in o_proj / down_proj biases
        new.attention_bias = True
        new.mlp_bias = True
    if getattr(new, "layer_types", None):
        new.layer_types = [config.layer_types[i] for i in subnet.layers]
    return new


def _rows(tensor: torch.Tensor, index: list[int], unit: int = 1) -> torch.Tensor:
    """Select rows (dim 0) in blocks of `unit` (e.g. head_dim rows per head)."""
    return tensor.index_select(0, expand_blocks(index, unit))


def _slice_param(rest: str, tensor: torch.Tensor, heads: list[int], groups: list[int], channels: list[int],
                 head_dim: int) -> torch.Tensor:
    """Slice one decoder-block parameter to the kept heads/groups/channels; shapes follow nn.Linear (out, in)."""
    if rest.startswith("self_attn.q_proj."):
        return _rows(tensor, heads, head_dim)                     # (heads*hd, D)
    if rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
        return _rows(tensor, groups, head_dim)                    # (kv*hd, D)
    if rest == "self_attn.o_proj.weight":
        return _rows(tensor.T, heads, head_dim).T.contiguous()    # (D, heads*hd)
    if rest.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
        return _rows(tensor, channels)                            # (I, D)
    if rest == "mlp.down_proj.weight":
        return tensor[:, channels].contiguous()                   # (D, I)
    return tensor                                                 # norms, o_proj/down_proj biases


def extract_model(model: PreTrainedModel, subnet: Subnet) -> PreTrainedModel:
    """Build the dense subnet model in memory (weights sliced, layers renumbered)."""
    dims = ModelDims.from_config(model.config)
    subnet.validate(dims)
    decoder_layers(model)  # fails clearly on unsupported architectures
    position = {layer: p for p, layer in enumerate(subnet.layers)}
    state = {}
    for key, tensor in model.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = tensor
            continue
        idx = int(match["idx"])
        if idx not in position:
            continue
        p = position[idx]
        sliced = _slice_param(match["rest"], tensor, list(subnet.heads[p]), list(subnet.kv_groups(dims, p)),
                              list(subnet.mlp_channels[p]), dims.head_dim)
        state[f"{match['prefix']}.{p}.{match['rest']}"] = sliced.clone()
    config = subnet_config(model.config, subnet)
    small = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    if subnet.bias is not None:
        _add_compensation(state, small.state_dict(), subnet)
    missing, unexpected = small.load_state_dict(state, strict=False)
    # Tied output embeddings appear under one name only; anything else missing is a real mismatch.
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"extraction mismatch: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    small.tie_weights()
    return small.eval()


def _add_compensation(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], subnet: Subnet) -> None:
    """Biases the source lacks start at zero; o_proj / down_proj biases then gain the compensation terms. A model
    class whose o_proj / down_proj cannot have a bias (several families hard-code bias=False whatever the config
    says) cannot hold the compensation: refused, never dropped silently."""
    holders = {match["rest"] for key in target if (match := _LAYER_KEY.match(key))}
    lacking = [name for name in ("self_attn.o_proj.bias", "mlp.down_proj.bias") if name not in holders]
    if lacking:
        raise UserError(f"this model's architecture has no {' / '.join(n.rsplit('.', 1)[0] for n in lacking)} bias "
                        "to hold FLAP's bias compensation exactly: make the subnet with `amoeba subnet --no-compensate` or "
                        "`amoeba search --no-compensate`")
    for key, tensor in target.items():
        if key.endswith(".bias") and key not in state:
            state[key] = torch.zeros_like(tensor)
    for key in state:
        match = _LAYER_KEY.match(key)
        if match and match["rest"] in ("self_attn.o_proj.bias", "mlp.down_proj.bias"):
            o_bias, down_bias = subnet.bias[int(match["idx"])]
            extra = o_bias if match["rest"].startswith("self_attn") else down_bias
            state[key] = state[key] + torch.tensor(extra, dtype=state[key].dtype)


def extract(loaded: LoadedModel, subnet: Subnet, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the subnet as a checkpoint dir (safetensors + config + tokenizer + amoeba_subnet.json), atomically;
    attached adapters are merged in, so the result is a plain dense model."""
    source = loaded.model
    if loaded.adapters is not None:   # merge: this subnet's gate-mixed LoRA update goes into a copy of the weights
        source = copy.deepcopy(loaded.model)
        loaded.adapters.merge_into(source, subnet)
    small = extract_model(source, subnet)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        small.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        provenance = subnet.to_dict(loaded.fingerprint)
        provenance["source_model_path"] = str(loaded.path)
        provenance["adapters_merged"] = None if loaded.adapters is None else loaded.adapters.describe()
        write_json_atomic(tmp / SUBNET_FILE, provenance)
    return Path(out_dir)
