"""SMoL: a shape-aware mixture of LoRAs. One router reads a subnet's shape (kept-layer mask + one-hot width) and
picks top-k of E LoRA experts; every adapted linear of that subnet mixes its experts with the same gate.

A custom layer rather than peft: peft's LoRA has no notion of a gate computed outside the layer from the subnet's
shape, nor of a LoRA restricted to the rows/columns a width-masked subnet keeps. The base model is never modified:
experts act through forward hooks added while a subnet is active, so the same weights serve every subnet."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from ..errors import UserError
from ..families.base import Family, family_of
from ..selection.space import SearchSpace
from ..subnet import ModelDims, Subnet
from ..view import block_slices, decoder_layers, subnet_view

@dataclass(frozen=True)
class AdapterConfig:
    """experts=1 is one plain LoRA shared by every subnet (no router): the ablation baseline. targets: block
    projections to adapt; empty = every linear of the model family's block (q/k/v/o/gate/up/down, or Phi-3's
    fused qkv / gate_up)."""

    experts: int = 4
    top_k: int = 2
    rank: int = 8
    alpha: float = 16.0
    router_hidden: int = 16
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.experts < 1 or self.rank < 1:
            raise UserError(f"experts ({self.experts}) and rank ({self.rank}) must be >= 1")
        if not 1 <= self.top_k <= self.experts:
            raise UserError(f"--top-k {self.top_k} must be between 1 and --experts {self.experts}")

    def resolved_targets(self, family: Family) -> tuple[str, ...]:
        unknown = set(self.targets) - set(family.targets)
        if unknown:
            raise UserError(f"unknown adapter targets {sorted(unknown)} for {family.model_type}: choose from "
                            f"{', '.join(family.targets)}")
        return self.targets or family.targets

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class ShapeRouter(nn.Module):
    """(N kept-layer mask + W one-hot width) -> 16 -> E logits, with learned noise while training (noisy top-k
    gating); keeps the top-k logits and softmaxes them, so a gate has exactly k non-zero weights summing to 1."""

    def __init__(self, n_features: int, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.hidden = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU())
        self.logits = nn.Linear(hidden, experts)
        self.noise = nn.Linear(hidden, experts)

    def forward(self, shape: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h = self.hidden(shape)                                              # (hidden,)
        logits = self.logits(h)                                             # (E,)
        if self.training:
            noise = torch.randn(logits.shape, generator=generator).to(logits)
            logits = logits + noise * F.softplus(self.noise(h))
        top, index = logits.topk(self.top_k)
        return torch.zeros_like(logits).scatter(0, index, top.softmax(0))   # (E,), k non-zeros


class LoRAExperts(nn.Module):
    """E low-rank updates of one linear (out x in): delta W = scaling * sum_e g_e B_e A_e; A random, B zero at start."""

    def __init__(self, in_features: int, out_features: int, experts: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(experts, rank, in_features))    # (E, r, in)
        self.B = nn.Parameter(torch.zeros(experts, out_features, rank))   # (E, out, r)
        for e in range(experts):
            nn.init.kaiming_uniform_(self.A.data[e], a=math.sqrt(5))        # peft's LoRA init

    def factors(self, gate: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None,
                scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The active experts stacked along the rank: A (k*r, in_kept) carrying the gate, B (out_kept, k*r)."""
        active = gate.nonzero().squeeze(1)
        A = self.A[active] * (gate[active] * scaling)[:, None, None]       # (k, r, in)
        B = self.B[active]                                                  # (k, out, r)
        if cols is not None:
            A = A.index_select(2, cols.to(A.device))
        if rows is not None:
            B = B.index_select(1, rows.to(B.device))
        return A.reshape(-1, A.shape[-1]), B.permute(1, 0, 2).reshape(B.shape[1], -1)

    def delta_weight(self, gate: torch.Tensor, scaling: float) -> torch.Tensor:
        A, B = self.factors(gate, None, None, scaling)
        return B @ A                                                        # (out, in)


def subnet_fingerprint(subnet: Subnet) -> str:
    """What adapters fine-tuned for one subnet are tied to: its kept layers, heads, channels and bias."""
    return hashlib.sha256(json.dumps(subnet.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


class SMoLAdapters(nn.Module):
    """Router + experts for every target linear of every layer, tied to the space of shapes they were trained on."""

    def __init__(self, dims: ModelDims, space: SearchSpace, config: AdapterConfig, model: PreTrainedModel) -> None:
        super().__init__()
        self.dims, self.space, self.config = dims, space, config
        self.family = family_of(model.config)
        self.targets = config.resolved_targets(self.family)
        n_features = dims.num_layers + len(space.heads) + len(space.mlp)
        self.router = (ShapeRouter(n_features, config.router_hidden, config.experts, config.top_k)
                       if config.experts > 1 else None)
        self.experts = nn.ModuleDict()
        for layer, block in enumerate(decoder_layers(model)):
            for target in self.targets:
                linear = block.get_submodule(target)
                self.experts[_key(layer, target)] = LoRAExperts(linear.in_features, linear.out_features,
                                                                config.experts, config.rank)
        self.record: dict = {}                  # the checkpoint record these adapters were loaded from / saved with
        self.fingerprint: str | None = None     # hash of the saved weights, for accuracy caches
        self.path = None

    def check_strategy(self, strategy) -> None:
        """Adapters only mean something for the subnets of the strategy they were trained with."""
        trained = self.record.get("strategy", {}).get("fingerprint")
        if trained != strategy.fingerprint:
            raise UserError(f"adapters were trained with strategy {trained}, not {strategy.fingerprint}: pass the "
                            "strategy used by `amoeba finetune`, or fine-tune for this one")

    def check_subnet(self, subnet: Subnet) -> None:
        """Adapters fine-tuned for one subnet (`amoeba finetune --subnet`) serve that subnet only; on any other they
        would be an update nobody trained. The full model is allowed where `adapts` leaves it untouched."""
        trained = self.record.get("subnet")
        if trained and self.adapts(subnet) and subnet_fingerprint(subnet) != trained["fingerprint"]:
            raise UserError(f"these adapters ({self.path}) were fine-tuned for one subnet ({trained['summary']}, "
                            f"fingerprint {trained['fingerprint']}), not this one ({subnet.summary(self.dims)}): "
                            "use them with that subnet, or one-for-all adapters (`amoeba finetune` without --subnet)")

    def describe(self) -> dict:
        return {"path": str(self.path), "fingerprint": self.fingerprint, "step": self.record.get("step"),
                "adapter": self.config.to_dict(),
                **({"subnet": self.record["subnet"]["fingerprint"]} if self.record.get("subnet") else {})}

    @property
    def saw_heterogeneous(self) -> bool:
        """Whether training sampled subnets with their own shape per layer (finetune --heterogeneous-per-step)."""
        return bool(self.record.get("training", {}).get("heterogeneous_per_step"))

    # ---- shape -> gate ---------------------------------------------------------------------------------------
    def shape_features(self, subnet: Subnet) -> torch.Tensor:
        """Kept-layer mask (N) + one-hot head count + one-hot MLP width; refuses shapes outside the trained space."""
        shape = subnet.uniform_shape(self.dims)
        if shape is None:
            raise UserError("the SMoL router encodes one width per subnet; this subnet has per-layer widths")
        heads, _, mlp = shape
        if heads not in self.space.heads or mlp not in self.space.mlp:
            raise UserError(f"adapters were trained for head counts {list(self.space.heads)} and MLP widths "
                            f"{list(self.space.mlp)}; this subnet has {heads} heads, {mlp} MLP channels")
        mask = torch.zeros(self.dims.num_layers)
        mask[list(subnet.layers)] = 1.0
        one_hot = torch.zeros(len(self.space.heads) + len(self.space.mlp))
        one_hot[self.space.heads.index(heads)] = 1.0
        one_hot[len(self.space.heads) + self.space.mlp.index(mlp)] = 1.0
        return torch.cat([mask, one_hot])

    def gate(self, subnet: Subnet, generator: torch.Generator | None = None) -> torch.Tensor:
        """(E,) expert weights for this subnet's shape; one plain LoRA always has weight 1."""
        device = next(self.parameters()).device
        if self.router is None:
            return torch.ones(1, device=device)
        return self.router(self.shape_features(subnet).to(device), generator)

    # ---- applying ----------------------------------------------------------------------------------------------
    def adapts(self, subnet: Subnet) -> bool:
        """False for the full model when these adapters were distilled into a frozen teacher: that teacher *is*
        the full model, so the only right update at the full shape is none. Why a rule and not training: the
        shipped adapters, trained with the full shape in every sandwich, still moved the full model's WikiText-2
        test perplexity from 25.6 to 32.2 (benchmarks/results/recovery.md before this rule): the update the
        subnets need is not zero at the full shape."""
        frozen = self.record.get("training", {}).get("teacher") == "frozen"
        return not (frozen and subnet.is_full(self.dims))

    @contextlib.contextmanager
    def applied(self, model: PreTrainedModel, subnet: Subnet,
                generator: torch.Generator | None = None) -> Iterator[PreTrainedModel]:
        """The in-place subnet view with every kept layer's experts added: y = W x + scaling * sum_e g_e B_e A_e x,
        the LoRA restricted to the rows/columns the subnet keeps (nothing added where `adapts` says no)."""
        self.check_subnet(subnet)
        if not self.adapts(subnet):
            with subnet_view(model, subnet):
                yield model
            return
        gate = self.gate(subnet, generator)
        layers = decoder_layers(model)
        handles = []
        try:
            for position, layer in enumerate(subnet.layers):
                slices = block_slices(self.family, self.dims, subnet, position)
                for target in self.targets:
                    rows, cols, _ = slices.get(target, (None, None, None))
                    experts = self.experts[_key(layer, target)]
                    handles.append(layers[layer].get_submodule(target).register_forward_hook(
                        _adding_hook(experts, gate, rows, cols, self.config.scaling)))
            with subnet_view(model, subnet):
                yield model
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def merge_into(self, model: PreTrainedModel, subnet: Subnet) -> None:
        """Add this subnet's mixed update to the full-size weights of its kept layers (router in eval mode)."""
        self.check_subnet(subnet)
        if not self.adapts(subnet):
            return
        was_training = self.training
        self.eval()
        gate = self.gate(subnet)
        layers = decoder_layers(model)
        for layer in subnet.layers:
            for target in self.targets:
                weight = layers[layer].get_submodule(target).weight
                delta = self.experts[_key(layer, target)].delta_weight(gate, self.config.scaling)
                weight += delta.to(weight)
        self.train(was_training)


def _key(layer: int, target: str) -> str:
    return f"{layer}.{target}".replace(".", "_")        # ModuleDict keys may not contain dots


def _adding_hook(experts: LoRAExperts, gate: torch.Tensor, rows, cols, scaling: float):
    def hook(module, args, output):
        A, B = experts.factors(gate, rows, cols, scaling)
        x = args[0]                                                         # (B, T, in_kept)
        return output + (x.to(A.dtype) @ A.T @ B.T).to(output.dtype)       # (B, T, out_kept)

    return hook
