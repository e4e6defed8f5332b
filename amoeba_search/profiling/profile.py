"""`amoeba profile`: time a 0-layer model and a k-layer model at every width of the space, per setting, on one
device through one flow; append each row as it is measured; fit the lookup table at the end."""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..artifacts import SCHEMA_VERSION
from ..errors import UserError
from ..layered import per_layer_heads
from ..models import LoadedModel
from ..subnet import ModelDims
from ..families.base import model_dims
from .environment import default_device_slug, measurement_environment
from .flows import FLOWS
from .flows.base import Flow, Prepared, element_bytes
from .harness import StopRule, measure, measure_paired, summarize
from .lut import (KEY, MEASUREMENT_COLUMNS, PROFILE_KIND, LookupTable, MeasurementLog, Setting, check_compatible,
                  check_block_fit, check_estimator, combine_runs, fit_lut, read_profile_meta, reference_level)
from .store import ProfileStore
from .timed_models import base_model, block_model, default_layers_per_row, lead_width

DEFAULT_MLP_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
QUICK_MLP_RATIOS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class WidthGrid:
    """The widths a table covers: uniform query-head counts (GQA-valid) x MLP channel counts, and with
    `mlp_only` the attention-free (MLP-only) blocks (heads 0) at every MLP width, which heterogeneous subnets
    use."""

    heads: tuple[int, ...]
    mlp: tuple[int, ...]
    mlp_only: bool = False

    @classmethod
    def for_model(cls, dims: ModelDims, ratios=DEFAULT_MLP_RATIOS, heads: tuple[int, ...] | None = None,
                  mlp_only: bool = False) -> "WidthGrid":
        channels = tuple(sorted({max(1, round(r * dims.intermediate_size)) for r in ratios}))
        valid = dims.head_counts()
        chosen = tuple(heads) if heads else tuple(valid)
        bad = [h for h in chosen if h not in valid]
        if bad:
            raise UserError(f"--heads {bad} not valid for this model (GQA allows {valid})")
        return cls(chosen, channels, mlp_only)

    @classmethod
    def from_design(cls, design: dict) -> "WidthGrid":
        """The grid a profile was measured on, from its meta.json design."""
        return cls(tuple(design["heads"]), tuple(design["mlp"]), bool(design.get("mlp_only_layers")))

    def widths(self) -> list[tuple[int, int]]:
        return list(itertools.product(self.heads, self.mlp)) + ([(0, m) for m in self.mlp] if self.mlp_only else [])


def tensor_mib(model: PreTrainedModel, setting: Setting, kv_dtype: str) -> tuple[float, float]:
    """Weights (at the setting's dtype) and KV-cache (at `kv_dtype`, the flow's cache type) sizes of a timed
    model, in MiB: exact for dense tensors."""
    config = model.config
    weights = sum(p.numel() for p in model.parameters()) * element_bytes(setting.dtype)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = per_layer_heads(config)[1]                      # a heterogeneous subnet's layers differ
    positions = setting.tokens + (1 if setting.phase == "decode" else 0)
    kv = 2 * sum(kv_heads) * setting.batch * positions * head_dim * element_bytes(kv_dtype)
    return weights / 2**20, kv / 2**20


@dataclass(frozen=True)
class Pairing:
    """A `paired` profile's reference model, prepared in this flow, and the level its latencies are stated at."""

    prepared: Prepared
    level_ms: float


def reference_pairing(flow: Flow, model: PreTrainedModel, lut: LookupTable, setting: Setting) -> Pairing | None:
    """What a measurement compared with a `paired` profile is timed in turns with: the profile's own reference
    model (design.reference: layers, heads, MLP channels), scaled to the profile's reference level. None for a
    profile of another estimator."""
    if lut.estimator != "paired":
        return None
    level = reference_level(MeasurementLog(lut.directory).read(), setting)
    if level is None:
        raise UserError(f"profile {lut.name} has no reference timings for {setting.label()}: re-profile it")
    return Pairing(prepare_reference(flow, model, lut.meta["design"]["reference"], setting), level)


def prepare_reference(flow: Flow, model: PreTrainedModel, reference: list[int], setting: Setting) -> Prepared:
    """The step of a `paired` profile's reference model (design.reference: layers, heads, MLP channels)."""
    return flow.prepare(block_model(model, *reference), setting)


def measure_model(flow: Flow, model: PreTrainedModel, setting: Setting, rule: StopRule,
                  reference: Prepared | None = None) -> dict:
    """One row: prepare the flow's step for this model and time it under the stop rule (in turns with
    `reference` when given: harness.measure_paired); wall_s is the row's whole cost (export/compile + warm-up +
    repeats), which is what a lookup table saves."""
    started = time.perf_counter()
    prepared = flow.prepare(model, setting)
    flow.reset_peak_memory()
    paired = {}
    if reference is None:
        result = measure(prepared.run, prepared.reset, flow.sync, rule, flow.peak_memory_mib)
    else:
        result, against = measure_paired(prepared.run, prepared.reset, reference.run, reference.reset, flow.sync,
                                         rule, flow.peak_memory_mib)
        paired = {"ref_median_ms": against.stats["median_ms"], "ref_p10_ms": against.stats["p10_ms"]}
    weights, kv = tensor_mib(model, setting, flow.kv_cache_dtype(setting.dtype))
    return {**result.stats, "converged": result.converged, "weights_mib": round(weights, 3), "kv_mib": round(kv, 3),
            "peak_mem_mib": "" if result.peak_mem_mib is None else round(result.peak_mem_mib, 1),
            "wall_s": round(time.perf_counter() - started, 3), **paired,
            "samples_ms": " ".join(f"{s:.4f}" for s in result.samples_ms)}


def measured_latency(flow: Flow, model: PreTrainedModel, setting: Setting, passes: int = 3,
                     estimator: str = "median", pairing: Pairing | None = None) -> dict:
    """What a report shows for a deployed model: `passes` independent timings (each converged under the stop
    rule) combined by the profile's estimator (`measured_ms`, comparable with its prediction: lut.ESTIMATORS;
    `pairing` for a `paired` profile: reference_pairing), their median, and the spread of all their samples
    (p10 / p90)."""
    runs = [measure_model(flow, model, setting, StopRule(), pairing.prepared if pairing else None)
            for _ in range(passes)]
    return summarize_runs(runs, estimator, pairing.level_ms if pairing else None)


def summarize_runs(runs: list[dict], estimator: str = "median", reference_ms: float | None = None) -> dict:
    """A model's timed passes (measure_model results) as a report shows them: combined by the estimator
    (`measured_ms`; `paired` needs the profile's `reference_ms`), their median, and the p10 / p90 of all their
    samples."""
    samples = sorted(float(v) for run in runs for v in run["samples_ms"].split())
    spread = summarize(samples)
    return {"measured_ms": combine_runs(runs, estimator, reference_ms), "estimator": estimator,
            "median_ms": combine_runs(runs, "median"), "p10_ms": spread["p10_ms"], "p90_ms": spread["p90_ms"],
            "passes": len(runs), "samples": len(samples)}


def profile_meta(loaded: LoadedModel, device: str, flow: Flow, source: str, extra: dict) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": PROFILE_KIND, "device": device, "flow": flow.name,
            "flow_description": flow.description, "source": source, "model": loaded.fingerprint,
            "environment": measurement_environment(flow.versions(), flow.device), **extra}


def open_profile(directory: Path, meta: dict, overwrite: bool) -> MeasurementLog:
    """Start or resume a profile directory; refuse to mix environments unless told to start over."""
    log = MeasurementLog(directory)
    meta_path = directory / "meta.json"
    if overwrite:
        for name in ("measurements.csv", "lut.csv", "meta.json", "correction.json", "validation.csv"):
            (directory / name).unlink(missing_ok=True)
    elif meta_path.is_file():
        existing = read_profile_meta(meta_path, "or start again with --overwrite")
        check_compatible(existing, meta, directory)
        # Resumed: the environment (date, reference-kernel speed) stays the one its rows were measured in, which
        # load warnings compare against; only the design (passes, estimator, fit) follows this call.
        meta = {**meta, "environment": existing["environment"], "created": existing.get("created", meta["created"])}
    directory.mkdir(parents=True, exist_ok=True)
    ProfileStore.write_meta(directory, meta)
    return log


def check_paired_resume(directory: Path, reference: list[int]) -> None:
    """A `paired` profile resumes only on rows timed in turns with the same reference model: ratios to another
    model, or rows without one, cannot share its level."""
    earlier = MeasurementLog(directory).read()
    if earlier.empty:
        return
    if earlier["ref_median_ms"].isna().any():
        raise UserError(f"{directory} holds rows timed without the reference model, which estimator 'paired' "
                        "needs: start it again with --overwrite, or keep its estimator")
    before = read_profile_meta(directory / "meta.json", "or start again with --overwrite")["design"].get("reference")
    if before != reference:
        raise UserError(f"{directory} was timed against reference model {before} (layers, heads, MLP channels), "
                        f"this run's would be {reference}: keep its --layers-per-row and widths, or --overwrite")


def build_profile(loaded: LoadedModel, directory: Path, device: str, flow_name: str, settings: list[Setting],
                  grid: WidthGrid, layers_per_row: int | None = None, rule: StopRule = StopRule(), passes: int = 3,
                  overwrite: bool = False, progress: bool = True, estimator: str = "median",
                  block_fit: str = "linear") -> LookupTable:
    """Measure every missing row (resuming), pass after pass over the grid, then fit (passes combined by
    `estimator`, lut.ESTIMATORS; blocks by `block_fit`, lut.BLOCK_FITS) and write lut.csv. `layers_per_row`:
    blocks per timed model (default: `default_layers_per_row`)."""
    flow = FLOWS.get(flow_name)
    for setting in settings:
        flow.require(setting.dtype)
    dims = model_dims(loaded.model.config)
    if layers_per_row is None:
        layers_per_row = default_layers_per_row(dims.num_layers, grid.mlp_only)
    if not 1 <= layers_per_row <= dims.num_layers:
        raise UserError(f"--layers-per-row must be in 1..{dims.num_layers}, got {layers_per_row}")
    if passes < 1:
        raise UserError(f"--passes must be >= 1, got {passes}")
    check_estimator(estimator)                                    # before any row is measured
    check_block_fit(block_fit)
    meta = profile_meta(loaded, device, flow, "measured", {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "design": {"layers_per_row": layers_per_row, "passes": passes, "heads": list(grid.heads),
                   "mlp": list(grid.mlp), "mlp_only_layers": grid.mlp_only,
                   "stop_rule": rule.__dict__, "estimator": estimator, "block_fit": block_fit,
                   **({"reference": [layers_per_row, *lead_width(grid.widths())]} if estimator == "paired" else {})},
        "model_dims": dims.__dict__,
        "units": {"latency": "ms", "memory": "MiB"},
        "memory_note": "weights_mib: the parameters at the setting's dtype; kv_mib: the K and V of the timed "
                       "positions at the flow's cache type (llama.cpp: f16); exact tensor sizes; peak_mem_mib is "
                       "torch's CUDA peak (GPU only)",
    })
    if estimator == "paired" and not overwrite:
        check_paired_resume(directory, meta["design"]["reference"])
    log = open_profile(directory, meta, overwrite)
    done = log.done()
    # The per-call part comes from a 0-layer model, or (runtimes that cannot load one) from a 1-layer model of the
    # widest width, which the fit separates from that width's layers_per_row row.
    anchor = (0, 0, 0) if flow.min_layers == 0 else (1, *max(grid.widths()))
    configs = [anchor] + [(layers_per_row, h, m) for h, m in grid.widths()]
    todo = [(p, c, s) for p in range(passes) for c in configs for s in settings
            if (p, s.phase, s.tokens, s.batch, s.dtype, *c) not in done]
    references: dict[Setting, Prepared] = {}            # `paired`: the reference model, prepared once per setting
    with tqdm(total=len(todo), disable=not progress, desc=f"profile {device}/{flow.name}", unit="row") as bar:
        for pass_index, config in itertools.product(range(passes), configs):
            pending = [s for p, c, s in todo if (p, c) == (pass_index, config)]
            if not pending:
                continue
            layers, heads, mlp = config
            model = base_model(loaded.model) if layers == 0 else block_model(loaded.model, layers, heads, mlp,
                                                                                lead_width(grid.widths()))
            for setting in pending:
                bar.set_postfix_str(f"pass {pass_index + 1}/{passes} {setting.phase} L={layers} h={heads} mlp={mlp}")
                if estimator == "paired" and setting not in references:
                    references[setting] = prepare_reference(flow, loaded.model, meta["design"]["reference"],
                                                            setting)
                row = measure_model(flow, model, setting, rule, references.get(setting))
                log.append([{"pass": pass_index, "phase": setting.phase, "tokens": setting.tokens,
                             "batch": setting.batch, "dtype": setting.dtype, "layers": layers, "heads": heads,
                             "mlp": mlp, **row}])
                bar.update()
    measurements = log.read()
    wanted = {(s.phase, s.tokens, s.batch, s.dtype) for s in settings}
    ProfileStore.write_table(directory, fit_lut(measurements, estimator, block_fit))
    missing = wanted - set(map(tuple, measurements[["phase", "tokens", "batch", "dtype"]].itertuples(index=False)))
    if missing:
        raise UserError(f"no rows measured for {sorted(missing)}")
    return LookupTable.load(directory)


def make_profile(loaded: LoadedModel, store: ProfileStore, flow_name: str, device: str | None,
                 settings: list[Setting], grid: WidthGrid, layers_per_row: int | None = None,
                 rule: StopRule = StopRule(),
                 passes: int = 3, overwrite: bool = False, progress: bool = True,
                 estimator: str = "median", block_fit: str = "linear") -> LookupTable:
    """The one call behind `amoeba profile`: measure a measured flow on this machine (device: its CPU/GPU model
    unless named), or estimate an estimate flow for the named device spec; imported flows are refused with
    the import command."""
    flow = FLOWS.get(flow_name)
    if flow.kind == "imported":
        raise UserError(f"flow {flow_name!r} is not timed here: {flow.unavailable()}")
    if flow.kind == "estimate":
        if device is None:
            raise UserError(f"--flow {flow_name} needs --device NAME with a spec file (`amoeba flows` lists them)")
        return flow.estimate(loaded, store, device, settings, grid)
    device = device or default_device_slug(flow.device)
    return build_profile(loaded, store.directory(device, flow_name), device, flow_name, settings, grid,
                         layers_per_row, rule, passes=passes, overwrite=overwrite, progress=progress,
                         estimator=estimator, block_fit=block_fit)


IMPORT_REQUIRED = ["phase", "tokens", "batch", "dtype", "layers", "heads", "mlp", "median_ms"]
INTEGER_COLUMNS = ["tokens", "batch", "layers", "heads", "mlp"]
LATENCY_COLUMNS = ["median_ms", "p10_ms", "p90_ms"]


def read_import_csv(csv_path: Path, dims: ModelDims) -> pd.DataFrame:
    """The rows of a results CSV, every value checked: one line names the first bad cell and the fix."""
    if not csv_path.is_file():
        raise UserError(f"results file {csv_path} not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv_path} is not a readable CSV ({str(exc).splitlines()[0]}): one header line "
                        f"{','.join(IMPORT_REQUIRED)} and one row per timed model") from None
    missing = [c for c in IMPORT_REQUIRED if c not in frame.columns]
    if missing:
        raise UserError(f"{csv_path} lacks columns {missing}: required {IMPORT_REQUIRED} (p10_ms, p90_ms optional)")
    if frame.empty:
        raise UserError(f"{csv_path} has a header but no rows: add one row per timed model")
    valid_heads = set(dims.head_counts())
    rows = []
    for index, raw in enumerate(frame.to_dict("records")):
        where = f"{csv_path} row {index + 2}"
        try:
            row = {**{c: int(raw[c]) for c in INTEGER_COLUMNS},
                   **{c: float(raw[c]) for c in LATENCY_COLUMNS if raw.get(c, "") != ""}}
        except ValueError:
            raise UserError(f"{where}: tokens/batch/layers/heads/mlp must be integers and *_ms numbers") from None
        row.update(phase=raw["phase"].strip(), dtype=raw["dtype"].strip())
        if row["phase"] not in ("prefill", "decode"):
            raise UserError(f"{where}: phase {row['phase']!r} must be prefill or decode")
        if not all(0 < row[c] < float("inf") for c in LATENCY_COLUMNS if c in row):
            raise UserError(f"{where}: latencies must be finite and > 0 ms")
        if min(row["tokens"], row["batch"]) < 1 or row["layers"] < 0:
            raise UserError(f"{where}: tokens and batch must be >= 1 and layers >= 0")
        if row["layers"] > 0 and (row["heads"] not in valid_heads | {0} or not 1 <= row["mlp"] <= dims.intermediate_size):
            raise UserError(f"{where}: {row['heads']} heads / {row['mlp']} MLP channels is not a width of this "
                            f"model (heads {sorted(valid_heads)} or 0 for MLP-only, MLP 1..{dims.intermediate_size})")
        rows.append(row)
    return pd.DataFrame(rows)


def import_profile(loaded: LoadedModel, csv_path: Path, store: ProfileStore, device: str, flow_name: str,
                   overwrite: bool = False, estimator: str = "median", block_fit: str = "linear") -> LookupTable:
    """Latencies measured elsewhere (one row per timed model, see README) as a profile: every row is checked and
    the table fitted in memory first, then the whole profile is written at once. An existing profile is extended
    (same model and flow; rows for the same model replaced) only when the merged rows fit too. `estimator` picks
    each row's latency as a native profile's does (quiet: its p10, where the file has one); `block_fit` too."""
    from .llama_bench import read_llama_bench
    from .optimum_benchmark import read_optimum_benchmark

    flow = FLOWS.get(flow_name)
    check_estimator(estimator)
    if estimator == "paired":
        raise UserError("--estimator paired: imported results were not timed in turns with a reference model; "
                        "use median or quiet")
    check_block_fit(block_fit)
    dims = model_dims(loaded.model.config)
    if csv_path.is_dir():                                        # an optimum-benchmark kit's results/
        new = read_optimum_benchmark(csv_path, loaded.fingerprint, flow_name)
    elif not csv_path.is_file():
        raise UserError(f"results file {csv_path} not found")
    else:
        new = read_llama_bench(csv_path, loaded.fingerprint) if csv_path.suffix in (".jsonl", ".json") \
            else read_import_csv(csv_path, dims)
    new["pass"] = 0
    for column in ("p10_ms", "p90_ms"):
        new[column] = new[column].fillna(new["median_ms"]) if column in new else new["median_ms"]
    new = new.assign(cv_pct=0.0, ci95_pct=0.0, repeats=1, converged=True, weights_mib=0.0, kv_mib=0.0,
                     peak_mem_mib="", wall_s=0.0, ref_median_ms=math.nan, ref_p10_ms=math.nan,
                     samples_ms=new["median_ms"].map(str))[MEASUREMENT_COLUMNS]
    meta = profile_meta(loaded, device, flow, "imported", {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "imported_from": str(csv_path), "model_dims": dims.__dict__, "units": {"latency": "ms"},
        "design": {"estimator": estimator, "block_fit": block_fit}})
    meta["environment"]["device_name"] = device
    directory = store.directory(device, flow_name)
    measurements = new
    if (directory / "meta.json").is_file() and not overwrite:
        check_compatible(read_profile_meta(directory / "meta.json", "or re-import with --overwrite"), meta,
                         directory)
        old = MeasurementLog(directory).read()
        replaced = old.set_index(KEY).index.isin(new.set_index(KEY).index)
        measurements = pd.concat([old[~replaced], new], ignore_index=True)
    table = fit_lut(measurements, estimator, block_fit)
    return store.write_profile(directory, meta, table, measurements)


def refit_profile(store: ProfileStore, device: str, flow_name: str, estimator: str | None = None,
                  block_fit: str | None = None) -> LookupTable:
    """Fit a measured or imported profile's table again from its measurements.csv, with another estimator or
    block fit (None: keep the profile's), without timing anything. What was derived from the old table (its
    correction, validation and figures) is removed: re-validate with benchmarks/predictor_accuracy.py."""
    lut = store.load(device, flow_name)
    directory = lut.directory
    if not (directory / "measurements.csv").is_file():
        raise UserError(f"{lut.name} has no measurements.csv to fit again (an estimate or a pre-fitted table)")
    estimator, block_fit = estimator or lut.estimator, block_fit or lut.block_fit
    check_estimator(estimator)
    check_block_fit(block_fit)
    measurements = MeasurementLog(directory).read()
    meta = {**lut.meta, "design": {**lut.meta.get("design", {}), "estimator": estimator, "block_fit": block_fit}}
    table = fit_lut(measurements, estimator, block_fit)
    for derived in ("correction.json", "validation.csv", "lut.png", "lut.svg"):
        (directory / derived).unlink(missing_ok=True)
    store.write_meta(directory, meta)
    store.write_table(directory, table)
    return LookupTable.load(directory)
