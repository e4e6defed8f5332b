"""Run the full model as if it were a subnet, without copying the model: skip layers, narrow heads/channels on the fly."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from .errors import UserError
from .families.base import Family, family_of, kept_index
from .subnet import ModelDims, Subnet


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder block list of a supported family's causal LM (`model.model.layers`)."""
    family_of(model.config)                       # an unknown architecture is refused with the supported list
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(model).__name__} has no decoder block list (base_model.layers): not a supported "
                        "causal LM")
    return layers


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


class SkippedAttention(nn.Module):
    """An attention sub-block that is not there (an MLP-only layer): it adds nothing to the residual stream. It
    still records one position per token in the KV cache (a (B, 1, T, 1) zero marker, negligible), because the
    model reads the cached length from its first layer's cache to place new tokens: an empty entry there would
    restart the positions at 0."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, use_cache: bool = True,
                **kwargs) -> tuple[torch.Tensor, None]:
        cache = cache if cache is not None else past_key_values
        if cache is not None and use_cache is not False:
            marker = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)  # (B, 1, T, 1)
            cache.update(marker, marker, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """An MLP sub-block that is not there (an attention-only layer): it adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def mlp_module(family: Family) -> str:
    """The MLP sub-block of a family's decoder block (the parent of its down projection)."""
    return family.mlp_out.rpartition(".")[0]


Slice = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]  # rows, cols, extra bias


def kept_units(dims: ModelDims, subnet: Subnet, position: int) -> dict[str, list[int]]:
    """The heads, KV groups and MLP channels kept layer number `position` keeps."""
    return {"heads": list(subnet.heads[position]), "groups": list(subnet.kv_groups(dims, position)),
            "channels": list(subnet.mlp_channels[position])}


def block_slices(family: Family, dims: ModelDims, subnet: Subnet, position: int) -> dict[str, Slice]:
    """(rows, cols, extra bias) per projection of kept layer number `position`, from the family's layout;
    projections left whole are left out."""
    kept, sizes = kept_units(dims, subnet, position), family.segment_sizes(dims)
    slices: dict[str, Slice] = {}
    for projection in family.projections:
        rows, cols = kept_index(projection.rows, kept, sizes), kept_index(projection.cols, kept, sizes)
        if rows is not None or cols is not None:
            slices[projection.name] = (rows, cols, None)
    if subnet.bias is not None:
        for name, vector in zip((family.attention_out, family.mlp_out), subnet.bias[position]):
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
    family = family_of(model.config)
    dims = ModelDims.from_config(model.config)
    subnet.validate(dims)
    family.check_subnet(dims, subnet)
    original = decoder_layers(model)
    patched: list[nn.Module] = []
    saved: list[tuple[object, str, object]] = []          # (object, attribute, original value), restored on exit

    def set_for_view(target, attribute: str, value) -> None:
        saved.append((target, attribute, getattr(target, attribute)))
        setattr(target, attribute, value)

    try:
        for position, layer_idx in enumerate(subnet.layers):
            block = original[layer_idx]
            heads, groups = subnet.heads[position], subnet.kv_groups(dims, position)
            if not heads:                    # attention skipped: the whole sub-block is replaced, nothing sliced
                set_for_view(block, family.attention, SkippedAttention(layer_idx))
            if not subnet.mlp_channels[position]:
                set_for_view(block, mlp_module(family), SkippedMLP())
            for name, (rows, cols, extra_bias) in block_slices(family, dims, subnet, position).items():
                if (not heads and name.startswith(family.attention + ".")) or (
                        not subnet.mlp_channels[position] and name.startswith(mlp_module(family) + ".")):
                    continue
                linear = block.get_submodule(name)
                linear.forward = _sliced_forward(linear, rows, cols, extra_bias)
                patched.append(linear)
            if 0 < len(heads) < dims.num_heads:
                # repeat_kv must map the remaining query heads onto the remaining KV heads.
                attention = block.get_submodule(family.attention)
                set_for_view(attention, "num_key_value_groups", len(heads) // len(groups))
                if hasattr(attention, "num_key_value_heads"):
                    set_for_view(attention, "num_key_value_heads", len(groups))
        if family.heads_from_config and subnet.layers and len(subnet.heads[0]) < dims.num_heads:
            for config in {id(c): c for c in (model.config, model.base_model.config)}.values():
                set_for_view(config, "num_attention_heads", len(subnet.heads[0]))
        with kept_layers(model, subnet.layers):
            yield model
    finally:
        for module in patched:
            del module.forward  # drop the instance attribute; the class forward applies again
        for target, attribute, value in reversed(saved):
            setattr(target, attribute, value)
