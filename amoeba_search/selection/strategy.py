"""The strategy file: per-depth kept layers (and later width rankings) with the model and calibration it came from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import SCHEMA_VERSION, environment, read_json, write_json_atomic
from ..errors import UserError

STRATEGY_KIND = "amoeba_search.strategy"


@dataclass
class Strategy:
    """What selection decided: kept layers for every depth, scored on a recorded calibration set."""

    model: dict
    calibration: dict
    depth: dict                      # method, metric, table rows {removed, num_layers, layers, calibration_loss}
    width: dict | None = None        # method, per-layer head/channel scores, input means (see selection.width)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": STRATEGY_KIND, "model": self.model,
                "calibration": self.calibration, "depth": self.depth, "width": self.width,
                "metadata": self.metadata or {"environment": environment()}}

    def save(self, path: str | Path) -> Path:
        """Compact JSON: the width scores are tens of thousands of numbers (2.1 MB indented, 1.2 MB compact)."""
        return write_json_atomic(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "Strategy":
        payload = read_json(path, "strategy", f"create one with `amoeba select --out {path}`")
        if payload.get("kind") != STRATEGY_KIND or payload.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"{path} is not a version-{SCHEMA_VERSION} strategy file (kind {payload.get('kind')!r})")
        return cls(payload["model"], payload["calibration"], payload["depth"], payload.get("width"),
                   payload.get("metadata", {}))

    def check_model(self, fingerprint: dict) -> None:
        """Refuse to apply a strategy computed for another model."""
        if self.model != fingerprint:
            raise UserError(f"strategy was computed for model {self.model} but the loaded model is {fingerprint}: "
                            "run `amoeba select` on this model")

    @property
    def fingerprint(self) -> str:
        """Identifies what a candidate means (the DP layers per depth + the width method), for caches and adapters."""
        payload = {"layers": [r["layers"] for r in self.depth["table"]],
                   "width": (self.width or {}).get("method")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def depths(self) -> list[int]:
        return sorted(row["num_layers"] for row in self.depth["table"])

    def layers_for(self, num_layers: int) -> list[int]:
        """Kept layers for a depth the strategy computed; the error lists the depths it has."""
        for row in self.depth["table"]:
            if row["num_layers"] == num_layers:
                return list(row["layers"])
        depths = self.depths()
        raise UserError(f"--layers {num_layers}: this strategy has depths {depths[0]}..{depths[-1]}; rerun "
                        f"`amoeba select` with a larger --max-removed to get {num_layers}")
