"""What a family file declares (Projection, Family) and the one lookup everything uses (`family_of`).

Layouts are data: a projection's output rows (or input columns) are a sequence of segments, each a run of
whole heads ("heads", head_dim rows each), KV groups ("groups", head_dim rows each) or MLP channels ("channels",
one row each). A split q_proj has rows ("heads",); Phi-3's fused qkv_proj has rows ("heads", "groups",
"groups"); o_proj has columns ("heads",). From that one description the view, the extraction and the adapters
compute the same kept indices, so they cannot disagree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..subnet import ModelDims, Subnet
from . import FAMILIES

KINDS = ("heads", "groups", "channels")


@dataclass(frozen=True)
class Projection:
    """One nn.Linear of a decoder block, named relative to the block (e.g. "self_attn.q_proj")."""

    name: str
    rows: tuple[str, ...] = ()          # output segments, in order
    cols: tuple[str, ...] = ()          # input segments, in order


@dataclass(frozen=True)
class Family:
    """Where things are in one architecture's decoder block, and what can be pruned exactly."""

    model_type: str
    projections: tuple[Projection, ...]
    attention: str = "self_attn"                    # the attention module inside a block
    attention_out: str = "self_attn.o_proj"         # holds the FLAP attention compensation as its bias
    mlp_out: str = "mlp.down_proj"                  # holds the FLAP MLP compensation as its bias
    # Config flags that give the model class an o_proj / down_proj bias; a part missing here cannot hold one.
    bias_flags: dict[str, dict] = field(default_factory=dict)
    # Why heads cannot be removed exactly (e.g. a norm over all heads together); None: they can.
    head_pruning_refusal: str | None = None
    # The attention reads the query/key split of a fused qkv from config.num_attention_heads (Phi-3): a view
    # must set it, which only works when every kept layer keeps the same head count.
    heads_from_config: bool = False
    gguf_arch: str | None = None                    # llama.cpp architecture name; None: no GGUF export

    @property
    def targets(self) -> tuple[str, ...]:
        """The projections adapters attach to: every linear of the block."""
        return tuple(p.name for p in self.projections)

    def check_subnet(self, dims: ModelDims, subnet: Subnet) -> None:
        """Refuse, with the reason, a subnet this family cannot run or extract exactly."""
        narrowed = any(len(h) < dims.num_heads for h in subnet.heads)
        if narrowed and self.head_pruning_refusal:
            raise UserError(f"{self.model_type}: attention heads cannot be removed exactly ({self.head_pruning_refusal}): "
                            "keep every head (a depth / MLP-width subnet, e.g. `--min-heads "
                            f"{dims.num_heads}` in a search)")
        if narrowed and self.heads_from_config and len({len(h) for h in subnet.heads}) > 1:
            raise UserError(f"{self.model_type}: the attention takes its head count from the config, so every kept "
                            "layer must keep the same number of heads")

    def segment_sizes(self, dims: ModelDims) -> dict[str, tuple[int, int]]:
        """kind -> (count in the full model, rows per unit)."""
        return {"heads": (dims.num_heads, dims.head_dim), "groups": (dims.num_kv_heads, dims.head_dim),
                "channels": (dims.intermediate_size, 1)}


def kept_index(segments: tuple[str, ...], kept: dict[str, list[int]], sizes: dict[str, tuple[int, int]]
               ) -> torch.Tensor | None:
    """Row (or column) indices a projection keeps, or None when it keeps all of them: each segment contributes
    its kept units' rows, offset by the full sizes of the segments before it."""
    if not segments or all(len(kept[kind]) == sizes[kind][0] for kind in segments):
        return None
    index, offset = [], 0
    for kind in segments:
        count, unit = sizes[kind]
        index += [offset + i * unit + j for i in kept[kind] for j in range(unit)]
        offset += count * unit
    return torch.tensor(index, dtype=torch.long)


def shrunk_config(config, **sizes):
    """A copy of `config` with new sizes, built through its class so the class's own validation runs (LLaMA and
    Gemma require hidden_size % heads == 0, Qwen2, Mistral and Phi-3 do not); refusals become one line."""
    values = {**config.to_dict(), **sizes}
    values.pop("quantization_config", None)
    try:
        return config.__class__.from_dict(values)
    except Exception as exc:         # the config class's validator: a shape this family's config cannot hold
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise UserError(f"transformers' {type(config).__name__} refuses this shape ({reason}): choose a head count "
                        f"it accepts (`amoeba models` lists them)") from None


def model_dims(config) -> ModelDims:
    """The model's sizes with the head counts its family allows: GQA-valid, accepted by the family's config class
    (LLaMA and Gemma require hidden_size % heads == 0, Qwen2, Mistral and Phi-3 do not), and only the full count
    where heads cannot be removed exactly."""
    dims = ModelDims.from_config(config)
    if family_of(config).head_pruning_refusal:
        return dataclasses.replace(dims, head_options=(dims.num_heads,))
    accepted = []
    for count in dims.gqa_head_counts():
        kv_heads = dims.num_kv_heads if count % dims.num_kv_heads == 0 else count // dims.group_size
        try:
            shrunk_config(config, num_attention_heads=count, num_key_value_heads=kv_heads, head_dim=dims.head_dim)
        except UserError:
            continue
        accepted.append(count)
    return dataclasses.replace(dims, head_options=tuple(accepted))


def family_of(config) -> Family:
    """The family of a transformers config, or one line naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES.names():
        raise UserError(f"model type {model_type!r} is not supported: amoeba_search knows the families "
                        f"{FAMILIES.choices()} (a new one is one file in amoeba_search/families/)")
    return FAMILIES.get(model_type)


def register_family(model_type: str, family: Family) -> Family:
    return FAMILIES.register(model_type)(family)


# The split layout of LLaMA and most of its descendants.
SPLIT = (Projection("self_attn.q_proj", rows=("heads",)), Projection("self_attn.k_proj", rows=("groups",)),
         Projection("self_attn.v_proj", rows=("groups",)), Projection("self_attn.o_proj", cols=("heads",)),
         Projection("mlp.gate_proj", rows=("channels",)), Projection("mlp.up_proj", rows=("channels",)),
         Projection("mlp.down_proj", cols=("channels",)))
