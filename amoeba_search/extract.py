"""Turn a subnet into a real, physically smaller dense HF checkpoint that plain transformers loads."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .artifacts import atomic_directory, write_json_atomic
from .errors import UserError
from .models import LoadedModel
from .subnet import ModelDims, Subnet
from .families.base import Family, family_of, kept_index, shrunk_config
from .layered import LAYER_SHAPES_KEY, layer_config, model_for_config
from .view import decoder_layers, kept_units, mlp_module

SUBNET_FILE = "amoeba_subnet.json"
# A SentencePiece model: transformers 5 saves tokenizer.json only, llama.cpp's Gemma 2 / Phi-3 converters read it.
SOURCE_TOKENIZER_FILES = ("tokenizer.model",)
_LAYER_KEY = re.compile(r"^(?P<prefix>.*\blayers)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def subnet_config(config, subnet: Subnet):
    """A config for the subnet, built (and validated) by the family's own config class. A uniform subnet gets a
    standard config. Per-layer widths have no standard field: the config keeps the model's full sizes and lists
    every layer's (heads, kv_heads, mlp) under `amoeba_layer_shapes`; `model_for_config` builds that model (plain
    `from_pretrained` refuses it: its weights disagree with the full sizes)."""
    dims = ModelDims.from_config(config)
    family = family_of(config)
    family.check_subnet(dims, subnet)
    shapes = [(len(h), len(subnet.kv_groups(dims, p)), len(m))
              for p, (h, m) in enumerate(zip(subnet.heads, subnet.mlp_channels))]
    sizes = {"num_hidden_layers": len(subnet.layers), "head_dim": dims.head_dim}  # heads * head_dim need not be hidden
    if len(set(shapes)) == 1 and all(shapes[0]):
        sizes.update(num_attention_heads=shapes[0][0], num_key_value_heads=shapes[0][1],
                     intermediate_size=shapes[0][2])
    else:
        for shape in set(shapes):                           # every layer's own config must be valid for the family
            layer_config(config, *shape)
        sizes[LAYER_SHAPES_KEY] = [{"heads": h, "kv_heads": k, "mlp": m} for h, k, m in shapes]
    if getattr(config, "layer_types", None):
        sizes["layer_types"] = [config.layer_types[i] for i in subnet.layers]
    for name in compensation_holders(family, subnet):     # FLAP compensation lives in o_proj / down_proj biases
        if name not in family.bias_flags:
            raise UserError(f"{family.model_type}: {name} has no bias to hold FLAP's bias compensation exactly: "
                            "make the subnet with `amoeba subnet --no-compensate` or `amoeba search --no-compensate`")
        sizes.update(family.bias_flags[name])
    return shrunk_config(config, **sizes)


def compensation_holders(family: Family, subnet: Subnet) -> list[str]:
    """The projections whose compensation bias is non-zero somewhere (zero needs no holder)."""
    if subnet.bias is None:
        return []
    return [name for part, name in enumerate((family.attention_out, family.mlp_out))
            if any(any(pair[part]) for pair in subnet.bias)]


def _slice_param(family: Family, rest: str, tensor: torch.Tensor, kept: dict[str, list[int]],
                 sizes: dict[str, tuple[int, int]]) -> torch.Tensor:
    """Slice one decoder-block parameter to the kept heads / groups / channels, from the family's layout; shapes
    follow nn.Linear (out, in), a bias follows its weight's rows. Norms and other parameters stay whole."""
    name, _, kind = rest.rpartition(".")
    projection = next((p for p in family.projections if p.name == name), None)
    if projection is None:
        return tensor
    rows = kept_index(projection.rows, kept, sizes)
    if rows is not None:
        tensor = tensor.index_select(0, rows)                        # (out_kept, in) or (out_kept,)
    cols = kept_index(projection.cols, kept, sizes) if kind == "weight" else None
    if cols is not None:
        tensor = tensor.index_select(1, cols)                        # (out, in_kept)
    return tensor.contiguous()


def extract_model(model: PreTrainedModel, subnet: Subnet) -> PreTrainedModel:
    """Build the dense subnet model in memory (weights sliced, layers renumbered)."""
    dims = ModelDims.from_config(model.config)
    subnet.validate(dims)
    decoder_layers(model)  # fails clearly on unsupported architectures
    family = family_of(model.config)
    config = subnet_config(model.config, subnet)   # every refusal before any copying
    sizes = family.segment_sizes(dims)
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
        rest = match["rest"]
        if (not subnet.heads[p] and rest.startswith(family.attention + ".")) or (
                not subnet.mlp_channels[p] and rest.startswith(mlp_module(family) + ".")):
            continue                                    # a skipped sub-block has no parameters
        sliced = _slice_param(family, match["rest"], tensor, kept_units(dims, subnet, p), sizes)
        state[f"{match['prefix']}.{p}.{match['rest']}"] = sliced.clone()
    small = model_for_config(config, model.dtype)
    if subnet.bias is not None:
        _add_compensation(family, state, small.state_dict(), subnet)
    target_shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    wrong = [k for k, v in state.items() if k in target_shapes and tuple(v.shape) != target_shapes[k]]
    if wrong:             # a parameter sized by heads or channels that the family file does not describe
        raise UserError(f"{family.model_type}: cannot slice {wrong[0]} {tuple(state[wrong[0]].shape)} to "
                        f"{target_shapes[wrong[0]]}: the family file does not describe this layout")
    missing, unexpected = small.load_state_dict(state, strict=False)
    # Tied output embeddings appear under one name only; anything else missing is a real mismatch.
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"extraction mismatch: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    small.tie_weights()
    return small.eval()


def _add_compensation(family: Family, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                      subnet: Subnet) -> None:
    """Biases the source lacks start at zero (exact: the switched-on biases of the other projections add
    nothing); o_proj / down_proj biases then gain the compensation terms. subnet_config already refused a
    family that cannot hold a non-zero term; the target is checked once more, never dropped silently."""
    holders = {match["rest"] for key in target if (match := _LAYER_KEY.match(key))}
    lacking = [name for name in compensation_holders(family, subnet) if f"{name}.bias" not in holders]
    if lacking:
        raise UserError(f"{family.model_type}: this model class has no {' / '.join(lacking)} bias to hold FLAP's "
                        "bias compensation exactly: make the subnet with `amoeba subnet --no-compensate` or "
                        "`amoeba search --no-compensate`")
    for key, tensor in target.items():
        if key.endswith(".bias") and key not in state:
            state[key] = torch.zeros_like(tensor)
    outputs = {f"{family.attention_out}.bias": 0, f"{family.mlp_out}.bias": 1}
    for key in state:
        match = _LAYER_KEY.match(key)
        if match and match["rest"] in outputs and key in target:
            extra = subnet.bias[int(match["idx"])][outputs[match["rest"]]]
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
        for name in SOURCE_TOKENIZER_FILES:          # what save_pretrained does not rewrite but converters read
            if (Path(loaded.path) / name).is_file() and not (tmp / name).exists():
                shutil.copy2(Path(loaded.path) / name, tmp / name)
        provenance = subnet.to_dict(loaded.fingerprint)
        provenance["source_model_path"] = str(loaded.path)
        provenance["adapters_merged"] = None if loaded.adapters is None else loaded.adapters.describe()
        write_json_atomic(tmp / SUBNET_FILE, provenance)
    return Path(out_dir)
