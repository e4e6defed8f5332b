"""Elastic subnet spec: kept layers plus kept attention heads and MLP channels per kept layer, as a validated JSON file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .artifacts import SCHEMA_VERSION, read_json, write_json_atomic
from .errors import UserError

SUBNET_KIND = "amoeba_search.subnet"


@dataclass(frozen=True)
class ModelDims:
    """The sizes a subnet is validated against, read from a transformers config."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    # Head counts the model family allows (its config class's validation, exactness), when known: see
    # families.base.model_dims. None: every GQA-valid count.
    head_options: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, config) -> "ModelDims":
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
        )

    @property
    def group_size(self) -> int:
        """Query heads sharing one KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def gqa_head_counts(self) -> list[int]:
        """Every uniform query-head count GQA can express: whole KV groups or the same number of heads in each."""
        per_group = {q * self.num_kv_heads for q in range(1, self.group_size + 1)}
        whole_groups = {g * self.group_size for g in range(1, self.num_kv_heads + 1)}
        return sorted(per_group | whole_groups)

    def head_counts(self) -> list[int]:
        """Every valid uniform query-head count: GQA-valid and, when known, allowed by the model family."""
        counts = self.gqa_head_counts()
        return counts if self.head_options is None else [c for c in counts if c in self.head_options]


@dataclass(frozen=True)
class Subnet:
    """Which original layers are kept, and which query heads / MLP channels each kept layer keeps (sorted indices)."""

    layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]
    mlp_channels: tuple[tuple[int, ...], ...]
    # FLAP bias compensation, one (o_proj bias, down_proj bias) pair of hidden_size floats per kept layer: the
    # expected contribution of the removed heads/channels, so the block output keeps its mean. None: no compensation.
    bias: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] | None = None

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def full(cls, dims: ModelDims) -> "Subnet":
        return cls.uniform(dims, layers=range(dims.num_layers))

    @classmethod
    def uniform(cls, dims: ModelDims, layers: Sequence[int], heads: int | None = None,
                mlp: int | float | None = None) -> "Subnet":
        """Same width in every kept layer; heads is a count, mlp a channel count (int) or a ratio (float <= 1)."""
        layers = tuple(int(i) for i in layers)
        head_set = canonical_heads(dims, dims.num_heads if heads is None else heads)
        mlp_count = mlp_channel_count(dims, mlp)
        subnet = cls(layers, (head_set,) * len(layers), (tuple(range(mlp_count)),) * len(layers))
        subnet.validate(dims)
        return subnet

    # ---- checks ---------------------------------------------------------------------------------------------
    def validate(self, dims: ModelDims) -> None:
        """Raise UserError naming the field and the allowed values at the first problem found."""
        last = dims.num_layers - 1
        if not self.layers:
            raise UserError("layers: a subnet must keep at least one layer")
        for i in self.layers:
            if not 0 <= i <= last:
                raise UserError(f"layers: layer {i} out of range 0..{last}")
        if len(set(self.layers)) != len(self.layers):
            dup = next(i for i in self.layers if self.layers.count(i) > 1)
            raise UserError(f"layers: duplicate layer {dup}; each layer may be kept once")
        if list(self.layers) != sorted(self.layers):
            raise UserError("layers: indices must be in ascending order (a subnet drops layers, it does not reorder them)")
        for field, per_layer in (("heads", self.heads), ("mlp_channels", self.mlp_channels)):
            if len(per_layer) != len(self.layers):
                raise UserError(f"{field}: has {len(per_layer)} entries but {len(self.layers)} layers are kept; "
                                "give one entry per kept layer (or one value for all)")
        for layer, heads, channels in zip(self.layers, self.heads, self.mlp_channels):
            # An empty set skips that sub-block (an MLP-only or attention-only layer); both empty is no layer.
            if not heads and not channels:
                raise UserError(f"layer {layer} keeps no heads and no MLP channels: drop it from 'layers' instead")
            if heads:
                check_index_set(f"heads of layer {layer}", heads, dims.num_heads)
                check_gqa(layer, heads, dims)
            if channels:
                check_index_set(f"mlp_channels of layer {layer}", channels, dims.intermediate_size)
        if self.bias is not None:
            if len(self.bias) != len(self.layers):
                raise UserError(f"bias_compensation: has {len(self.bias)} entries but {len(self.layers)} layers are kept")
            for layer, pair, heads, channels in zip(self.layers, self.bias, self.heads, self.mlp_channels):
                if any(len(vector) != dims.hidden_size for vector in pair):
                    raise UserError(f"bias_compensation of layer {layer}: vectors must have hidden_size "
                                    f"{dims.hidden_size} values")
                for part, kept, vector in (("o_proj", heads, pair[0]), ("down_proj", channels, pair[1])):
                    if not kept and any(vector):
                        raise UserError(f"bias_compensation of layer {layer}: its {part} sub-block is skipped, so "
                                        "its compensation must be zero (a skipped sub-block has no bias to hold it)")

    # ---- derived shape ---------------------------------------------------------------------------------------
    def kv_groups(self, dims: ModelDims, position: int) -> tuple[int, ...]:
        """KV heads still used by kept layer number `position`."""
        return tuple(sorted({h // dims.group_size for h in self.heads[position]}))

    def uniform_shape(self, dims: ModelDims) -> tuple[int, int, int] | None:
        """(query heads, kv heads, mlp channels) if every kept layer has the same, else None."""
        shapes = {(len(h), len(self.kv_groups(dims, p)), len(m))
                  for p, (h, m) in enumerate(zip(self.heads, self.mlp_channels))}
        return shapes.pop() if len(shapes) == 1 else None

    def summary(self, dims: ModelDims) -> str:
        shape = self.uniform_shape(dims)
        width = f"{shape[0]} heads, {shape[2]} mlp" if shape else "per-layer widths"
        skipped = sum(not h for h in self.heads), sum(not m for m in self.mlp_channels)
        if any(skipped):
            width += f"; {skipped[0]} MLP-only, {skipped[1]} attention-only"
        return f"{len(self.layers)}/{dims.num_layers} layers, {width}"

    def is_full(self, dims: ModelDims) -> bool:
        return self == Subnet.full(dims)

    # ---- files -----------------------------------------------------------------------------------------------
    def to_dict(self, model_fingerprint: dict | None = None) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": SUBNET_KIND,
            "model": model_fingerprint,
            "layers": list(self.layers),
            "heads": [list(h) for h in self.heads],
            "mlp_channels": [list(c) for c in self.mlp_channels],
            "bias_compensation": None if self.bias is None else [
                {"o_proj": list(o_bias), "down_proj": list(down_bias)} for o_bias, down_bias in self.bias],
        }

    def save(self, path: str | Path, model_fingerprint: dict | None = None) -> Path:
        return write_json_atomic(path, self.to_dict(model_fingerprint))

    @classmethod
    def from_dict(cls, payload: Any, dims: ModelDims) -> "Subnet":
        """Parse and validate; per-layer entries may be a list of indices, or a count (first n), or one value for all."""
        if not isinstance(payload, dict):
            raise UserError("subnet JSON must be an object with 'layers', 'heads' and 'mlp_channels'")
        version = payload.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise UserError(f"schema_version: {version!r} is not supported; this amoeba_search reads {SCHEMA_VERSION}")
        if "layers" not in payload:
            raise UserError("layers: missing; give the kept layer indices, e.g. \"layers\": [0, 1, 2]")
        layers = payload["layers"]
        if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise UserError("layers: must be a list of integer layer indices")
        heads = _per_layer("heads", payload.get("heads"), len(layers), lambda n: canonical_heads(dims, n))
        channels = _per_layer("mlp_channels", payload.get("mlp_channels"), len(layers),
                              lambda n: tuple(range(mlp_channel_count(dims, n))))
        subnet = cls(tuple(layers), heads or (canonical_heads(dims, dims.num_heads),) * len(layers),
                     channels or (tuple(range(dims.intermediate_size)),) * len(layers),
                     _parse_bias(payload.get("bias_compensation")))
        subnet.validate(dims)
        return subnet

    @classmethod
    def load(cls, path: str | Path, dims: ModelDims, model: dict | None = None) -> "Subnet":
        """A subnet file; with `model` (a fingerprint), one made for another model is refused."""
        payload = read_json(path, "subnet", f"write one with `amoeba subnet --out {path}`")
        recorded = payload.get("model") if isinstance(payload, dict) else None
        if model is not None and recorded is not None and recorded != model:
            raise UserError(f"{path} was made for model {recorded}, not the loaded {model}: make the subnet for this "
                            "model (`amoeba subnet --model ...`) or pass the model it was made for")
        return cls.from_dict(payload, dims)


def canonical_heads(dims: ModelDims, count: int) -> tuple[int, ...]:
    """The first `count` query heads laid out GQA-validly: n/G heads in every group, else whole groups; 0 keeps
    none (the layer's attention is skipped)."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise UserError(f"heads: {count!r} is not a head count; allowed: {dims.head_counts()}")
    if count == 0:
        return ()                                               # the attention sub-block skipped
    if count not in dims.head_counts():
        raise UserError(f"heads: {count} query heads cannot be kept with {dims.num_kv_heads} KV groups of "
                        f"{dims.group_size}; allowed: {dims.head_counts()}")
    if count % dims.num_kv_heads == 0:
        per_group = count // dims.num_kv_heads
        return tuple(g * dims.group_size + q for g in range(dims.num_kv_heads) for q in range(per_group))
    return tuple(range(count))  # whole groups, the first count / group_size of them


def mlp_channel_count(dims: ModelDims, value: int | float | None) -> int:
    """Channel count from a count or a ratio of the full intermediate size."""
    if value is None:
        return dims.intermediate_size
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise UserError(f"mlp: ratio {value} must be in (0, 1]")
        return max(1, round(value * dims.intermediate_size))
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= dims.intermediate_size:
        return value                                            # 0: the layer's MLP is skipped
    raise UserError(f"mlp: {value!r} must be a channel count 0..{dims.intermediate_size} or a ratio in (0, 1]")


def check_index_set(field: str, indices: Sequence[int], size: int) -> None:
    if not indices:
        raise UserError(f"{field}: keeps nothing; keep at least one (allowed indices 0..{size - 1})")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size:
            raise UserError(f"{field}: index {i!r} out of range 0..{size - 1}")
    if len(set(indices)) != len(indices):
        raise UserError(f"{field}: duplicate index; each may be kept once")
    if list(indices) != sorted(indices):
        raise UserError(f"{field}: indices must be sorted ascending")


def check_gqa(layer: int, heads: Sequence[int], dims: ModelDims) -> None:
    """Each KV group keeps 0 or the same number of query heads, so a standard GQA config can express the layer."""
    counts: dict[int, int] = {}
    for h in heads:
        counts[h // dims.group_size] = counts.get(h // dims.group_size, 0) + 1
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"group {g} keeps {n}" for g, n in sorted(counts.items()))
        raise UserError(f"heads of layer {layer}: {detail}; keep whole KV groups or the same number of query heads "
                        f"in each kept group (group size {dims.group_size}, allowed counts {dims.head_counts()})")


def _per_layer(field: str, value: Any, n_layers: int, from_count) -> tuple[tuple[int, ...], ...] | None:
    """Expand a field given as null, one count, one index list, or one entry (count or list) per kept layer."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float):
        return (from_count(value),) * n_layers
    if not isinstance(value, list):
        raise UserError(f"{field}: must be a count, a list of indices, or one such entry per kept layer")
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (tuple(value),) * n_layers  # one index list shared by every kept layer
    entries = []
    for entry in value:
        if isinstance(entry, list):
            entries.append(tuple(entry))
        elif isinstance(entry, (int, float)) and not isinstance(entry, bool):
            entries.append(from_count(entry))
        else:
            raise UserError(f"{field}: entry {entry!r} must be a list of indices or a count")
    return tuple(entries)


def _parse_bias(value: Any) -> tuple | None:
    if value is None:
        return None
    try:
        return tuple((tuple(float(x) for x in entry["o_proj"]), tuple(float(x) for x in entry["down_proj"]))
                     for entry in value)
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError("bias_compensation: must be null or one {\"o_proj\": [...], \"down_proj\": [...]} object "
                        "per kept layer") from exc
