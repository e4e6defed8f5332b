"""Roofline estimates for devices we cannot reach: each block's time is the larger of its FLOPs over the usable
compute peak and its bytes over the usable memory bandwidth, plus fixed overheads, all from a device spec file.
Profiles made this way are labelled `"source": "roofline-estimate"`; they are estimates, not measurements."""

from __future__ import annotations

import datetime as _dt
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from ..artifacts import SCHEMA_VERSION, read_json
from ..errors import UserError
from ..models import LoadedModel
from ..subnet import ModelDims, Subnet
from ..families.base import model_dims
from .flows.base import element_bytes
from .lut import LUT_COLUMNS, PROFILE_KIND, LookupTable, Setting
from .store import ProfileStore

SPEC_KIND = "amoeba_search.device_spec"
REQUIRED = ("name", "memory_bandwidth_gbs", "peak_tflops", "efficiency")


@dataclass(frozen=True)
class DeviceSpec:
    """Peak figures (datasheet) and the fraction of them real kernels reach (efficiency), with sources."""

    name: str
    memory_bandwidth_gbs: float
    peak_tflops: dict[str, float]
    efficiency: dict[str, float]                 # {"bandwidth": 0..1, "compute": 0..1}
    overhead_ms: dict[str, float] = field(default_factory=lambda: {"per_call": 0.0, "per_block": 0.0})
    description: str = ""
    sources: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": SPEC_KIND, **self.__dict__}


def spec_names(store: ProfileStore | None = None) -> list[str]:
    """Spec names in the store's specs dirs (its root's, then the shipped ones)."""
    return sorted({p.stem for d in (store or ProfileStore()).spec_dirs() if d.is_dir() for p in d.glob("*.json")})


def load_spec(name_or_path: str, store: ProfileStore | None = None) -> DeviceSpec:
    """A spec by name (the store's specs dirs) or path; missing fields or bad values are one-line errors."""
    store = store or ProfileStore()
    candidates = [Path(name_or_path)] + [d / f"{name_or_path}.json" for d in store.spec_dirs()]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"no device spec {name_or_path!r}: known specs {spec_names(store)}; write "
                        "device_profiles/specs/NAME.json (see README: roofline estimates)")
    payload = read_json(path, "device spec", "see README")
    if not isinstance(payload, dict):
        raise UserError(f"device spec {path} must be a JSON object with {list(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise UserError(f"device spec {path} lacks {missing}: required {list(REQUIRED)}")
    try:
        spec = DeviceSpec(name=str(payload["name"]), memory_bandwidth_gbs=_number(payload["memory_bandwidth_gbs"]),
                          peak_tflops={str(k): _number(v) for k, v in _mapping(payload["peak_tflops"]).items()},
                          efficiency={str(k): _number(v) for k, v in _mapping(payload["efficiency"]).items()},
                          overhead_ms={str(k): _number(v) for k, v in _mapping(
                              payload.get("overhead_ms", {"per_call": 0.0, "per_block": 0.0})).items()},
                          description=str(payload.get("description", "")), sources=payload.get("sources") or {})
    except (TypeError, ValueError) as exc:
        raise UserError(f"device spec {path}: {exc}") from None
    if not all(0 < spec.efficiency.get(k, 0) <= 1 for k in ("bandwidth", "compute")):
        raise UserError(f"device spec {path}: efficiency needs 'bandwidth' and 'compute' in (0, 1]")
    if spec.memory_bandwidth_gbs <= 0 or not spec.peak_tflops or min(spec.peak_tflops.values()) <= 0:
        raise UserError(f"device spec {path}: memory_bandwidth_gbs must be > 0 and peak_tflops non-empty, all > 0")
    if min(spec.overhead_ms.values(), default=0.0) < 0:
        raise UserError(f"device spec {path}: overhead_ms values must be >= 0")
    return spec


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} must be an object such as {{\"float32\": 1.0}}")
    return value


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes moved by one piece of a step."""

    flops: float
    bytes: float


def block_work(dims: ModelDims, heads: int, mlp: int, setting: Setting) -> Work:
    """One decoder block at a width: projections + attention FLOPs; weights + KV cache + activations bytes."""
    element = element_bytes(setting.dtype)
    kv = len(Subnet.uniform(dims, [0], heads=heads).kv_groups(dims, 0))
    D, d, B = dims.hidden_size, dims.head_dim, setting.batch
    new = setting.tokens if setting.phase == "prefill" else 1
    # keys each query attends to, summed over the new tokens (causal prefill: 1..P; decode: C cached + 1)
    pairs = new * (new + 1) / 2 if setting.phase == "prefill" else setting.tokens + 1
    weights = D * heads * d * 2 + 2 * D * kv * d + 3 * D * mlp + 2 * D
    flops = 2 * B * new * (weights - 2 * D) + 4 * B * heads * d * pairs
    kv_bytes = 2 * B * kv * d * (setting.tokens + (1 if setting.phase == "decode" else 0)) * element
    activations = B * new * (6 * D + 3 * mlp) * element
    return Work(flops, weights * element + kv_bytes + activations)


def base_work(dims: ModelDims, vocab: int, setting: Setting) -> Work:
    """Embedding gather for the new tokens, final norm and the LM head on the last token."""
    element = element_bytes(setting.dtype)
    new = setting.tokens if setting.phase == "prefill" else 1
    D, B = dims.hidden_size, setting.batch
    return Work(2 * B * D * vocab, (D * vocab + B * new * D + D) * element)


def seconds(work: Work, spec: DeviceSpec, dtype: str) -> float:
    if dtype not in spec.peak_tflops:
        raise UserError(f"device spec {spec.name} has no peak_tflops for {dtype}: add it (have "
                        f"{sorted(spec.peak_tflops)})")
    compute = work.flops / (spec.peak_tflops[dtype] * 1e12 * spec.efficiency["compute"])
    memory = work.bytes / (spec.memory_bandwidth_gbs * 1e9 * spec.efficiency["bandwidth"])
    return max(compute, memory)


def estimate_table(spec: DeviceSpec, dims: ModelDims, vocab: int, settings: list[Setting],
                   widths: list[tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for s in settings:
        key = {"phase": s.phase, "tokens": s.tokens, "batch": s.batch, "dtype": s.dtype}
        base = 1e3 * seconds(base_work(dims, vocab, s), spec, s.dtype) + spec.overhead_ms.get("per_call", 0.0)
        rows.append({**key, "component": "base", "heads": 0, "mlp": 0, "latency_ms": base, "rows": 0})
        for h, m in widths:
            block = 1e3 * seconds(block_work(dims, h, m, s), spec, s.dtype) + spec.overhead_ms.get("per_block", 0.0)
            rows.append({**key, "component": "block", "heads": h, "mlp": m, "latency_ms": block, "rows": 0})
    return pd.DataFrame(rows, columns=LUT_COLUMNS)


def estimate_profile(loaded: LoadedModel, spec: DeviceSpec, directory: Path, settings: list[Setting],
                     grid, store: ProfileStore | None = None) -> LookupTable:
    """Write an estimated profile (lut.csv + meta.json with the spec and method) for a device spec."""
    dims = model_dims(loaded.model.config)
    table = estimate_table(spec, dims, loaded.model.config.vocab_size, settings, grid.widths())
    return (store or ProfileStore()).write_profile(directory, {
        "schema_version": SCHEMA_VERSION, "kind": PROFILE_KIND, "device": spec.name, "flow": "roofline",
        "source": "roofline-estimate", "model": loaded.fingerprint, "model_dims": dims.__dict__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": "per block: max(FLOPs / (peak * eff_compute), bytes / (bandwidth * eff_bandwidth)) + per-block "
                  "overhead; base: LM head on the last token + embedding gather + per-call overhead. An estimate "
                  "for ideal kernels, not a measurement.",
        "spec": spec.to_dict(), "units": {"latency": "ms"}}, table)


def calibrate(spec: DeviceSpec, measured: LookupTable, dims: ModelDims, vocab: int,
              settings: list[Setting], widths: list[tuple[int, int]] | None = None) -> DeviceSpec:
    """Fit efficiencies (grid over 1%..100%) and non-negative overheads (median residual) to a measured table,
    minimising the mean absolute percentage error over its base and block entries."""
    entries = [(s, None, measured.base_ms(s)) for s in settings] + [
        (s, w, measured.block_ms(s, *w)) for s in settings for w in (widths or measured.widths(s))]
    works = [base_work(dims, vocab, s) if w is None else block_work(dims, *w, s) for s, w, _ in entries]
    flops = np.array([w.flops for w in works])
    moved = np.array([w.bytes for w in works])
    peak = np.array([spec.peak_tflops[s.dtype] * 1e12 if s.dtype in spec.peak_tflops else np.nan
                     for s, _, _ in entries])
    if np.isnan(peak).any():
        raise UserError(f"device spec {spec.name} lacks peak_tflops for a measured dtype")
    target = np.array([t for *_, t in entries])
    is_block = np.array([w is not None for _, w, _ in entries])
    best, best_err = spec, float("inf")
    for eff_c, eff_b in itertools.product(np.geomspace(0.01, 1.0, 60), repeat=2):
        ideal = 1e3 * np.maximum(flops / (peak * eff_c), moved / (spec.memory_bandwidth_gbs * 1e9 * eff_b))
        residual = target - ideal
        per_call = max(0.0, float(np.median(residual[~is_block]))) if (~is_block).any() else 0.0
        per_block = max(0.0, float(np.median(residual[is_block]))) if is_block.any() else 0.0
        predicted = ideal + np.where(is_block, per_block, per_call)
        err = float(np.mean(np.abs(predicted - target) / target))
        if err < best_err:
            best_err = err
            best = replace(spec, efficiency={"compute": float(eff_c), "bandwidth": float(eff_b)},
                           overhead_ms={"per_call": per_call, "per_block": per_block})
    return best
