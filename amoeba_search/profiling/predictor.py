"""Latency of any subnet from a lookup table: base + sum of its blocks' latencies, optionally corrected by a
two-term least-squares fit on directly measured subnets (for effects composition misses, e.g. caches)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import read_json, write_json_atomic
from ..errors import UserError
from ..subnet import ModelDims, Subnet
from .lut import LookupTable, Setting

CORRECTION_FILE = "correction.json"


def subnet_widths(subnet: Subnet) -> list[tuple[int, int]]:
    """(query heads, MLP channels) of every kept layer."""
    return [(len(h), len(m)) for h, m in zip(subnet.heads, subnet.mlp_channels)]


@dataclass(frozen=True)
class Correction:
    """measured ≈ block_scale * Σ block + base_scale * base, fitted per setting on measured subnets."""

    block_scale: float
    base_scale: float

    def apply(self, base_ms: float, blocks_ms: float) -> float:
        return self.block_scale * blocks_ms + self.base_scale * base_ms

    @classmethod
    def fit(cls, base_ms: list[float], blocks_ms: list[float], measured_ms: list[float]) -> "Correction":
        design = np.column_stack([blocks_ms, base_ms])
        (block_scale, base_scale), *_ = np.linalg.lstsq(design, np.asarray(measured_ms), rcond=None)
        return cls(float(block_scale), float(base_scale))


def setting_key(setting: Setting) -> str:
    return f"{setting.phase}/{setting.tokens}/{setting.batch}/{setting.dtype}"


def load_corrections(lut: LookupTable) -> dict[str, Correction]:
    path = lut.directory / CORRECTION_FILE
    if not path.is_file():
        return {}
    payload = read_json(path, "predictor correction", "re-run benchmarks/predictor_accuracy.py")
    return {k: Correction(**v) for k, v in payload.get("settings", {}).items()}


def save_corrections(directory: Path, corrections: dict[str, Correction], fitted_on: int) -> None:
    write_json_atomic(directory / CORRECTION_FILE, {
        "schema_version": 1, "kind": "amoeba_search.predictor_correction", "fitted_on_subnets": fitted_on,
        "formula": "latency_ms = block_scale * sum(block_ms) + base_scale * base_ms",
        "settings": {k: c.__dict__ for k, c in corrections.items()}})


class Predictor:
    """Composes a subnet's latency from a LUT; uses the profile's correction.json when one exists."""

    def __init__(self, lut: LookupTable, use_correction: bool = True) -> None:
        self.lut = lut
        self.corrections = load_corrections(lut) if use_correction else {}

    def parts_ms(self, setting: Setting, widths: list[tuple[int, int]]) -> tuple[float, float]:
        """(base, Σ blocks) in ms; a width missing from the table is a one-line error naming it."""
        return self.lut.base_ms(setting), sum(self.lut.block_ms(setting, h, m) for h, m in widths)

    def predict_ms(self, setting: Setting, widths: list[tuple[int, int]]) -> float:
        if not widths:
            raise UserError("a subnet keeps at least one layer")
        base, blocks = self.parts_ms(setting, widths)
        correction = self.corrections.get(setting_key(setting))
        return correction.apply(base, blocks) if correction else base + blocks

    def is_corrected(self, setting: Setting) -> bool:
        return setting_key(setting) in self.corrections

    def predict_subnet_ms(self, setting: Setting, subnet: Subnet, dims: ModelDims) -> float:
        subnet.validate(dims)
        return self.predict_ms(setting, subnet_widths(subnet))
