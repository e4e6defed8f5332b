"""Run the full model as if it were a subnet, without copying the model: skip layers, narrow heads/channels on the fly."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from .errors import UserError
from .subnet import ModelDims, Subnet


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder block list of a LLaMA-family causal LM (`model.model.layers`)."""
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(model).__name__} is not a supported architecture: amoeba_search needs a "
                        "LLaMA-family decoder (base_model.layers with self_attn.*_proj and mlp.*_proj)")
    return layers


def expand_blocks(index: list[int], unit: int) -> torch.Tensor:
    """Indices of `unit`-sized blocks, e.g. the head_dim rows of each kept head."""
    return torch.tensor([i * unit + j for i in index for j in range(unit)], dtype=torch.long)


def _sliced_forward(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None,
                    extra_bias: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward using only the kept rows (outputs) / columns (inputs) of W, plus any compensation bias:
    the computation the extracted layer runs."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = linear.weight, linear.bias
        if rows is not None:
            weight = weight.index_select(0, rows.to(weight.device))
            bias = None if bias is None else bias.index_select(0, rows.to(bias.device))
        if cols is not None:
            weight = weight.index_select(1, cols.to(weight.device))
        if extra_bias is not None:
            extra = extra_bias.to(weight)
            bias = extra if bias is None else bias + extra
        return F.linear(x, weight, bias)

    return forward


Slice = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]  # rows, cols, extra bias


def block_slices(dims: ModelDims, subnet: Subnet, position: int) -> dict[str, Slice]:
    """(rows, cols, extra bias) per projection of kept layer number `position`; projections left whole are left out."""
    heads, groups, channels = subnet.heads[position], subnet.kv_groups(dims, position), subnet.mlp_channels[position]
    bias = subnet.bias[position] if subnet.bias is not None else None
    slices: dict[str, Slice] = {}
    if len(heads) < dims.num_heads:
        head_rows = expand_blocks(list(heads), dims.head_dim)            # q rows / o_proj cols: (heads*hd)
        slices["self_attn.q_proj"] = (head_rows, None, None)
        slices["self_attn.o_proj"] = (None, head_rows, None)
    if len(groups) < dims.num_kv_heads:
        group_rows = expand_blocks(list(groups), dims.head_dim)          # k/v rows: (kv*hd)
        slices["self_attn.k_proj"] = (group_rows, None, None)
        slices["self_attn.v_proj"] = (group_rows, None, None)
    if len(channels) < dims.intermediate_size:
        kept = torch.tensor(channels, dtype=torch.long)                  # act(gate(x)) * up(x): (I,)
        slices["mlp.gate_proj"] = (kept, None, None)
        slices["mlp.up_proj"] = (kept, None, None)
        slices["mlp.down_proj"] = (None, kept, None)
    if bias is not None:
        for name, vector in zip(("self_attn.o_proj", "mlp.down_proj"), bias):
            rows, cols, _ = slices.get(name, (None, None, None))
            slices[name] = (rows, cols, torch.tensor(vector))
    return slices


@contextlib.contextmanager
def kept_layers(model: PreTrainedModel, layer_indices: Sequence[int]) -> Iterator[PreTrainedModel]:
    """Temporarily run only these decoder layers (any number, including none), as the extracted model would:
    models with per-layer types (Gemma's sliding vs full attention, Qwen's sliding windows) pick each layer's
    mask by its *position* in `config.layer_types`, and caches address layers by `layer_idx`, so both follow the
    kept layers for the duration. Restored on exit."""
    base = model.base_model
    original = decoder_layers(model)
    configs = {id(c): c for c in (model.config, base.config)}.values()
    types = [(config, config.layer_types) for config in configs if getattr(config, "layer_types", None)]
    attentions = [(position, original[i].self_attn) for position, i in enumerate(layer_indices)
                  if hasattr(getattr(original[i], "self_attn", None), "layer_idx")]
    indices = [(attention, attention.layer_idx) for _, attention in attentions]
    base.layers = nn.ModuleList([original[i] for i in layer_indices])
    for config, layer_types in types:
        config.layer_types = [layer_types[i] for i in layer_indices]
    for position, attention in attentions:
        attention.layer_idx = position
    try:
        yield model
    finally:
        base.layers = original
        for config, layer_types in types:
            config.layer_types = layer_types
        for attention, index in indices:
            attention.layer_idx = index


@contextlib.contextmanager
def subnet_view(model: PreTrainedModel, subnet: Subnet) -> Iterator[PreTrainedModel]:
    """Temporarily turn `model` into `subnet` in place; the original structure is restored on exit, even on error."""
    dims = ModelDims.from_config(model.config)
    subnet.validate(dims)
    original = decoder_layers(model)
    patched: list[nn.Module] = []
    attention_groups: list[tuple[nn.Module, int]] = []
    try:
        for position, layer_idx in enumerate(subnet.layers):
            block = original[layer_idx]
            heads, groups = subnet.heads[position], subnet.kv_groups(dims, position)
            for name, (rows, cols, extra_bias) in block_slices(dims, subnet, position).items():
                linear = block.get_submodule(name)
                linear.forward = _sliced_forward(linear, rows, cols, extra_bias)
                patched.append(linear)
            if len(heads) < dims.num_heads:
                # repeat_kv must map the remaining query heads onto the remaining KV heads.
                attention_groups.append((block.self_attn, block.self_attn.num_key_value_groups))
                block.self_attn.num_key_value_groups = len(heads) // len(groups)
        with kept_layers(model, subnet.layers):
            yield model
    finally:
        for module in patched:
            del module.forward  # drop the instance attribute; the class forward applies again
        for attention, groups in attention_groups:
            attention.num_key_value_groups = groups
