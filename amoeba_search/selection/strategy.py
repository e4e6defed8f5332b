"""The strategy file: per-depth kept layers (and later width rankings) with the model and calibration it came from."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import SCHEMA_VERSION, environment, read_json, write_json_atomic
from ..errors import UserError

STRATEGY_KIND = "amoeba_search.strategy"


def _invalid(path, what: str) -> UserError:
    return UserError(f"{path} is not a valid strategy file ({what}): recreate it with `amoeba select --out {path}`")


@dataclass(frozen=True)
class DepthRow:
    """One depth of the table: the layers kept when `removed` of them are dropped, and their calibration loss."""

    removed: int
    num_layers: int
    layers: tuple[int, ...]
    calibration_loss: float | None = None

    def to_dict(self) -> dict:
        row = {"removed": self.removed, "num_layers": self.num_layers, "layers": list(self.layers)}
        return row if self.calibration_loss is None else {**row, "calibration_loss": self.calibration_loss}


@dataclass
class DepthSection:
    """What the depth selector decided, for every depth N..N-max_removed."""

    method: str
    metric: str
    rows: list[DepthRow]
    max_removed: int
    protected_layers: list[int]
    evaluations: int
    seconds: float
    seed: int | None = None

    def to_dict(self) -> dict:
        return {"method": self.method, **({"seed": self.seed} if self.seed is not None else {}),
                "metric": self.metric, "max_removed": self.max_removed, "protected_layers": self.protected_layers,
                "evaluations": self.evaluations, "seconds": self.seconds, "table": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, payload, path) -> "DepthSection":
        try:
            rows = [DepthRow(int(r["removed"]), int(r["num_layers"]), tuple(int(i) for i in r["layers"]),
                             None if r.get("calibration_loss") is None else float(r["calibration_loss"]))
                    for r in payload["table"]]
            section = cls(str(payload["method"]), str(payload.get("metric", "")), rows,
                          int(payload.get("max_removed", len(rows) - 1)),
                          [int(i) for i in payload.get("protected_layers", [])], int(payload.get("evaluations", 0)),
                          float(payload.get("seconds", 0.0)), payload.get("seed"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _invalid(path, f"depth table: {type(exc).__name__} {exc}") from None
        if not rows:
            raise _invalid(path, "empty depth table")
        return section


@dataclass
class WidthScores:
    """Importance of every head and MLP channel of every layer (higher = keep), and the mean input of o_proj /
    down_proj per feature (FLAP bias compensation); lists are indexed by original layer."""

    method: str
    head_scores: list[list[float]]
    mlp_scores: list[list[float]]
    attn_input_mean: list[list[float]]
    mlp_input_mean: list[list[float]]
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__) if self.calibration is not None else {
            k: v for k, v in self.__dict__.items() if k != "calibration"}

    @classmethod
    def from_dict(cls, payload, path) -> "WidthScores":
        try:
            scores = cls(str(payload["method"]), payload["head_scores"], payload["mlp_scores"],
                         payload["attn_input_mean"], payload["mlp_input_mean"], payload.get("calibration"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise _invalid(path, f"width scores: {type(exc).__name__} {exc}") from None
        tables = (scores.head_scores, scores.mlp_scores, scores.attn_input_mean, scores.mlp_input_mean)
        if not all(isinstance(t, list) and t and all(isinstance(row, list) and row and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
                for row in t) for t in tables) or len({len(t) for t in tables}) != 1:
            raise _invalid(path, "width scores must be one list of finite numbers per layer")
        return scores

    def check(self, dims) -> None:
        """The scores must have the model's shape (a hand-edited or foreign file would index out of range)."""
        expected = {"head_scores": dims.num_heads, "mlp_scores": dims.intermediate_size,
                    "attn_input_mean": dims.num_heads * dims.head_dim, "mlp_input_mean": dims.intermediate_size}
        for name, width in expected.items():
            rows = getattr(self, name)
            if len(rows) != dims.num_layers or any(len(row) != width for row in rows):
                raise UserError(f"strategy width scores '{name}' do not fit the model ({dims.num_layers} layers x "
                                f"{width}): recompute the strategy with `amoeba select` for this model")


REMOVED = (0, 0)               # the block variant (heads, mlp) that drops the layer
METRICS = ("kl", "loss_delta")


@dataclass
class BlockScores:
    """rows: one {layer, heads, mlp, kl, loss_delta} per layer x variant (heads = mlp = 0: layer removed); kl in
    nats per token, loss_delta in nats per token against the full model's `base_loss`."""

    calibration: dict
    base_loss: float
    compensate: bool
    variants: list[tuple[int, int]]
    rows: list[dict]
    seconds: float = 0.0
    metric_note: str = field(default="kl: mean KL(full || replaced) per token; loss_delta: calibration NLL increase")

    def to_dict(self) -> dict:
        return {"calibration": self.calibration, "base_loss": self.base_loss, "compensate": self.compensate,
                "variants": [list(v) for v in self.variants], "seconds": self.seconds, "metric": self.metric_note,
                "rows": self.rows}

    @classmethod
    def from_dict(cls, payload, path) -> "BlockScores":
        try:
            scores = cls(dict(payload["calibration"]), float(payload["base_loss"]), bool(payload["compensate"]),
                         [(int(h), int(m)) for h, m in payload["variants"]],
                         [{"layer": int(r["layer"]), "heads": int(r["heads"]), "mlp": int(r["mlp"]),
                           "kl": float(r["kl"]), "loss_delta": float(r["loss_delta"])} for r in payload["rows"]],
                         float(payload.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path} has an invalid block-score section ({type(exc).__name__} {exc}): recompute it "
                            f"with `amoeba blocks --strategy {path} --out {path}`") from None
        return scores

    def table(self, metric: str, num_layers: int) -> list[dict[tuple[int, int], float]]:
        """Per layer: variant -> score (lower is better); the full block scores 0 by definition."""
        if metric not in METRICS:
            raise UserError(f"block score metric {metric!r}: choose {', '.join(METRICS)}")
        per_layer: list[dict[tuple[int, int], float]] = [{} for _ in range(num_layers)]
        for row in self.rows:
            per_layer[row["layer"]][(row["heads"], row["mlp"])] = row[metric]
        missing = [(i, v) for i in range(num_layers) for v in self.variants if v not in per_layer[i]]
        if missing:
            raise UserError(f"the strategy's block scores lack layer {missing[0][0]} variant {missing[0][1]} "
                            f"({len(missing)} missing): finish them with `amoeba blocks` (it resumes)")
        return per_layer


@dataclass
class Strategy:
    """What selection decided: kept layers for every depth, scored on a recorded calibration set, and the
    importance of every head and channel."""

    model: dict
    calibration: dict
    depth: DepthSection
    width: WidthScores | None = None
    metadata: dict = field(default_factory=dict)
    blocks: "BlockScores | None" = None  # replace-one-block scores (heterogeneous search; selection.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": STRATEGY_KIND, "model": self.model,
                "calibration": self.calibration, "depth": self.depth.to_dict(),
                "width": None if self.width is None else self.width.to_dict(),
                **({} if self.blocks is None else {"blocks": self.blocks.to_dict()}),
                "metadata": self.metadata or {"environment": environment()}}

    def save(self, path: str | Path) -> Path:
        """Compact JSON: the width scores are tens of thousands of numbers (2.1 MB indented, 1.2 MB compact)."""
        return write_json_atomic(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "Strategy":
        payload = read_json(path, "strategy", f"create one with `amoeba select --out {path}`")
        if not isinstance(payload, dict) or payload.get("kind") != STRATEGY_KIND or payload.get(
                "schema_version") != SCHEMA_VERSION:
            kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
            raise UserError(f"{path} is not a version-{SCHEMA_VERSION} strategy file (kind {kind!r})")
        for key, kind in (("model", dict), ("calibration", dict), ("depth", dict)):
            if not isinstance(payload.get(key), kind):
                raise _invalid(path, f"'{key}' must be an object")
        width, blocks = payload.get("width"), payload.get("blocks")
        return cls(payload["model"], payload["calibration"], DepthSection.from_dict(payload["depth"], path),
                   None if width is None else WidthScores.from_dict(width, path), payload.get("metadata") or {},
                   None if blocks is None else BlockScores.from_dict(blocks, path))

    def check_model(self, fingerprint: dict) -> None:
        """Refuse to apply a strategy computed for another model."""
        if self.model != fingerprint:
            raise UserError(f"strategy was computed for model {self.model} but the loaded model is {fingerprint}: "
                            "run `amoeba select` on this model")

    @property
    def fingerprint(self) -> str:
        """Identifies what a candidate means (the DP layers per depth + the width method), for caches and adapters."""
        payload = {"layers": [list(r.layers) for r in self.depth.rows],
                   "width": None if self.width is None else self.width.method}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def depths(self) -> list[int]:
        return sorted(row.num_layers for row in self.depth.rows)

    def layers_for(self, num_layers: int) -> list[int]:
        """Kept layers for a depth the strategy computed; the error lists the depths it has."""
        for row in self.depth.rows:
            if row.num_layers == num_layers:
                return list(row.layers)
        depths = self.depths()
        raise UserError(f"--layers {num_layers}: this strategy has depths {depths[0]}..{depths[-1]}; rerun "
                        f"`amoeba select` with a larger --max-removed to get {num_layers}")
