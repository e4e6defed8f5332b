"""Lookup tables: raw measurements appended as they are taken (resumable), fitted into per-width block latencies.

A row of `measurements.csv` is one timed model: `layers` decoder blocks of one width (heads, mlp) in one setting
(phase, tokens, batch, dtype). `layers = 0` is the model with no blocks: embedding + final norm + LM head + the
per-call overhead of the flow, always paid together, so kept as one term, `base`. Per setting, the least-squares
fit  latency = base + layers * block(heads, mlp)  over all rows gives `lut.csv` (an MLP-only row, heads 0, also
holds one block of the widest width first: profile.block_model): one `base` row and one `block`
row per width. Each model is timed in several passes over the whole grid, and its passes are combined by the
profile's estimator (ESTIMATORS) before the fit. With the default design (a 0-layer model and a k-layer model per
width) this is the exact difference (T_k - T_0) / k, and it includes what blocks cost inside a real model (cache
updates, per-layer glue)."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..artifacts import SCHEMA_VERSION, read_json
from ..errors import UserError
from .environment import environment_key

PROFILE_KIND = "amoeba_search.device_profile"
SETTING = ["phase", "tokens", "batch", "dtype"]
CONFIG = SETTING + ["layers", "heads", "mlp"]
KEY = ["pass"] + CONFIG
MEASUREMENT_COLUMNS = KEY + ["median_ms", "p10_ms", "p90_ms", "cv_pct", "ci95_pct", "repeats", "converged",
                             "weights_mib", "kv_mib", "peak_mem_mib", "wall_s", "samples_ms"]
# A row timed in turns with the profile's reference model (estimator `paired`) keeps that model's figures from the
# same moments; other rows leave them empty. Logs written before these columns existed are read and extended.
REFERENCE_COLUMNS = ["ref_median_ms", "ref_p10_ms"]
MEASUREMENT_COLUMNS += REFERENCE_COLUMNS
LUT_COLUMNS = SETTING + ["component", "heads", "mlp", "latency_ms", "rows"]
# How a model's passes become one latency. median: the median of the passes' medians (drift hits every width
# alike). quiet: the lowest p10 over the passes. On a shared VM, other tenants' use of the memory system only adds
# time, in bursts of minutes (measured here: a subnet's passes 28% apart, up to 2x). The fast tail is then
# the machine's own speed, and it stays comparable between a profile and the subnets it predicts. Reports of a
# subnet's measured latency keep the median and p10-p90.
# paired: each pass times the model in turns with one fixed reference model (harness.measure_paired); the
# median over passes of model / reference, times the reference's median over the whole profile: the latency at
# the profile's typical speed, with the host's minute-scale swings divided out.
ESTIMATORS = {"median": "median of the passes' medians", "quiet": "lowest p10 over the passes",
              "paired": "median ratio to the profile's reference model (timed in turns) x its level"}
BLOCK_FITS = {"linear": "block = a + b [has attention] + c heads + d MLP channels, least squares over every width",
              "per-width": "one free latency per width"}


@dataclass(frozen=True)
class Setting:
    """One table's coordinates: a phase at P prompt tokens (prefill) or C cached tokens (decode), batch, dtype."""

    phase: str
    tokens: int
    batch: int
    dtype: str

    def label(self) -> str:
        what = "P" if self.phase == "prefill" else "C"
        return f"{self.phase} {what}={self.tokens} batch={self.batch} {self.dtype}"

    @property
    def metric(self) -> str:
        """What one measurement is, in serving terms: time to first token (prefill of P tokens) or time per
        output token (one decoded token after C cached ones)."""
        return "TTFT" if self.phase == "prefill" else "TPOT"

    @property
    def rate_name(self) -> str:
        """llama-bench's names for the throughput: pp (prompt processing) and tg (text generation)."""
        return "pp tok/s" if self.phase == "prefill" else "tg tok/s"

    def tokens_per_s(self, latency_ms: float) -> float:
        """Throughput of one measurement: batch x P prompt tokens per TTFT, or batch tokens per TPOT."""
        return (self.batch * (self.tokens if self.phase == "prefill" else 1)) / (latency_ms / 1e3)

    def describe(self, latency_ms: float, digits: int = 3) -> str:
        """'TPOT 12.345 ms (81.0 tg tok/s)'."""
        return f"{self.metric} {latency_ms:.{digits}f} ms ({self.tokens_per_s(latency_ms):.1f} {self.rate_name})"


class MeasurementLog:
    """measurements.csv: each row appended and fsynced as soon as it is measured, so a killed run loses at most
    the row in flight; a torn last line is dropped on reading."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "measurements.csv"

    def read(self) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame(columns=MEASUREMENT_COLUMNS)
        try:
            with open(self.path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                header = set(reader.fieldnames or [])
                rows = [{**dict.fromkeys(REFERENCE_COLUMNS, ""), **row} for row in reader if None not in row.values()]
            if rows and not set(MEASUREMENT_COLUMNS) - set(REFERENCE_COLUMNS) <= header:
                raise csv.Error("unknown header")
        except (UnicodeDecodeError, csv.Error):
            raise UserError(f"{self.path} is not a measurement log written by `amoeba profile`: start the profile "
                            "again with --overwrite") from None
        frame = pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)
        try:
            for column in ("pass", "tokens", "batch", "layers", "heads", "mlp", "repeats"):
                frame[column] = pd.to_numeric(frame[column]).astype(int)
            for column in ("median_ms", "p10_ms", "p90_ms", "cv_pct", "ci95_pct", "weights_mib", "kv_mib", "wall_s"):
                frame[column] = pd.to_numeric(frame[column])
            for column in ["peak_mem_mib"] + REFERENCE_COLUMNS:
                frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
        except (ValueError, TypeError):
            raise UserError(f"{self.path} holds non-numeric values: it is not a measurement log written by "
                            "`amoeba profile`; start the profile again with --overwrite") from None
        return frame

    def done(self) -> set[tuple]:
        frame = self.read()
        return {tuple(row) for row in frame[KEY].itertuples(index=False, name=None)}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            self._drop_torn_tail()
            self._extend_header()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MEASUREMENT_COLUMNS)
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in MEASUREMENT_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())

    def _extend_header(self) -> None:
        """A log from before the reference columns is rewritten once with them (empty), atomically."""
        with open(self.path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if header == MEASUREMENT_COLUMNS:
            return
        self.read()                            # refuses a file that is not a measurement log before rewriting it
        temporary = self.path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MEASUREMENT_COLUMNS)
            writer.writeheader()
            with open(self.path, newline="", encoding="utf-8") as source:
                for row in csv.DictReader(source):
                    if None not in row.values():
                        writer.writerow({k: row.get(k, "") for k in MEASUREMENT_COLUMNS})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def _drop_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)


def check_estimator(estimator: str, label: str = "estimator") -> None:
    if estimator not in ESTIMATORS:
        raise UserError(f"{label} {estimator!r} unknown: use {' or '.join(ESTIMATORS)}")


def combine_runs(runs: Iterable[dict[str, Any]], estimator: str = "median",
                 reference_ms: float | None = None) -> float:
    """One latency from a model's passes (each a dict with median_ms and p10_ms; for `paired` also ref_median_ms,
    and `reference_ms`, the profile's reference level: `reference_levels`), by the estimator."""
    runs = list(runs)
    check_estimator(estimator)
    if estimator == "median":
        return float(np.median([float(r["median_ms"]) for r in runs]))
    if estimator == "paired":
        ratios = [float(r["median_ms"]) / float(r.get("ref_median_ms") or math.nan) for r in runs]
        if reference_ms is None or any(math.isnan(v) for v in ratios):
            raise UserError("estimator 'paired' needs rows timed in turns with the profile's reference model: "
                            "re-profile with --estimator paired, or use the median estimator")
        return float(np.median(ratios)) * reference_ms
    p10 = [float(r.get("p10_ms", math.nan)) for r in runs]
    if any(math.isnan(v) for v in p10):
        raise UserError("estimator 'quiet' needs every row's p10_ms: re-measure, or use the median estimator")
    return min(p10)


def reference_levels(measurements: pd.DataFrame) -> dict[tuple, float]:
    """Per setting (SETTING values), the median of the reference model's medians over every paired row: the speed
    a `paired` profile states its latencies at."""
    paired = measurements.dropna(subset=["ref_median_ms"])
    return {tuple(key): float(group["ref_median_ms"].astype(float).median())
            for key, group in paired.groupby(SETTING, sort=True)}


def reference_level(measurements: pd.DataFrame, setting: Setting) -> float | None:
    """The reference level (`reference_levels`) of one setting; None when no row of it was paired."""
    return reference_levels(measurements).get(tuple(getattr(setting, name) for name in SETTING))


def pass_tails_pct(measurements: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per phase: how far a timed model's passes reach below and above its middle pass (p10 of each pass, in % of
    their median; the median over models). `quiet` assumes interference only adds time, so that the slow side is
    the wider one; where the fast side is wider, one lucky pass sets a model's figure, and the median of the passes
    is the sound estimator. On amd-epyc ONNX Runtime decode (8 passes) the fast side was 23.8% against 13.2%, and
    the same timings gave 11.2% MAPE combined by `quiet` and 2.8% by the median; every other table there had the
    slow side wider and did better with `quiet`."""
    tails: dict[str, dict[str, float]] = {}
    for phase, rows in measurements.groupby("phase", sort=True):
        below, above = [], []
        for _, group in rows.groupby(CONFIG, sort=False):
            p10 = group["p10_ms"].astype(float).to_numpy()
            middle = float(np.median(p10))
            if len(p10) > 1 and middle > 0:
                below.append(100 * (middle - p10.min()) / middle)
                above.append(100 * (p10.max() - middle) / middle)
        if below:
            tails[str(phase)] = {"below_pct": float(np.median(below)), "above_pct": float(np.median(above))}
    return tails


def combine_passes(measurements: pd.DataFrame, estimator: str = "median") -> pd.DataFrame:
    """One `median_ms` per timed model (CONFIG) from its passes, by the estimator (ESTIMATORS)."""
    check_estimator(estimator)                                    # an unknown name fails even with no rows
    levels = reference_levels(measurements) if estimator == "paired" else {}
    rows = [{**dict(zip(CONFIG, key)), "median_ms": combine_runs(group.to_dict("records"), estimator,
                                                                  levels.get(tuple(key[:len(SETTING)])))}
            for key, group in measurements.groupby(CONFIG, sort=True)]
    return pd.DataFrame(rows, columns=CONFIG + ["median_ms"])


def check_block_fit(block_fit: str, label: str = "block fit") -> None:
    if block_fit not in BLOCK_FITS:
        raise UserError(f"{label} {block_fit!r} unknown: use {' or '.join(BLOCK_FITS)}")


def fit_lut(measurements: pd.DataFrame, estimator: str = "median", block_fit: str = "linear") -> pd.DataFrame:
    """Least squares per setting: latency = base + layers * block(width); needs a 0-layer row or two depths.
    A model timed in several passes (spread over the run, so slow drifts of a shared machine hit every width
    alike) counts once, its passes combined by `estimator`. `block_fit` linear then replaces the per-width
    blocks by their least-squares plane in (has attention, heads, MLP channels) (`linear_blocks`)."""
    from scipy.optimize import lsq_linear

    check_block_fit(block_fit)
    measurements = combine_passes(measurements, estimator)
    out = []
    for setting, group in measurements.groupby(SETTING, sort=True):
        widths = sorted({(int(h), int(m)) for h, m, layers in group[["heads", "mlp", "layers"]].itertuples(
            index=False, name=None) if layers > 0})
        column = {w: i + 1 for i, w in enumerate(widths)}
        lead = max((w for w in widths if w[0] > 0), default=None)
        design = np.zeros((len(group), 1 + len(widths)))
        design[:, 0] = 1.0
        for r, (h, m, layers) in enumerate(group[["heads", "mlp", "layers"]].itertuples(index=False, name=None)):
            if layers > 0:
                design[r, column[(int(h), int(m))]] = layers
                if h == 0 and lead is not None:      # an MLP-only row's model starts with one lead block
                    design[r, column[lead]] += 1
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise UserError(f"cannot separate base and block latency for {setting}: measure the 0-layer model "
                            "or two depths per width (re-run `amoeba profile` to complete the table)")
        # Non-negative least squares: the same answer whenever every part comes out positive (the usual case);
        # rows timed on a thrashed machine once gave a negative block and a negative predicted latency.
        solution = lsq_linear(design, group["median_ms"].to_numpy(float), bounds=(0.0, np.inf)).x
        base = dict(zip(SETTING, setting))
        counts = group.groupby(["heads", "mlp"]).size()  # distinct depths measured per width
        out.append({**base, "component": "base", "heads": 0, "mlp": 0, "latency_ms": solution[0],
                    "rows": int((group["layers"] == 0).sum())})
        for (h, m), value in zip(widths, solution[1:]):
            out.append({**base, "component": "block", "heads": h, "mlp": m, "latency_ms": value,
                        "rows": int(counts.get((h, m), 0))})
    table = pd.DataFrame(out, columns=LUT_COLUMNS)
    return linear_blocks(table) if block_fit == "linear" else table


def linear_blocks(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting, every block latency replaced by the plane a + b [heads > 0] + c heads + d mlp fitted through
    all widths' blocks (least absolute residuals: `_least_absolute`). Why: a block's time is a fixed per-block cost (launches, norms, cache update;
    an MLP-only block skips attention's) plus work proportional to the weights it reads, which grow linearly with
    heads (q, k, v, o rows) and MLP channels; one row per width is only as good as the few seconds it was timed
    in, while the plane pools every width's rows. Measured (benchmarks/results/block_fit.md, the 20-subnet
    validations of every shipped profile): lower composed MAPE on 13 of 14 device/flow/phase tables."""
    table = table.copy()
    for _, group in table[table["component"] == "block"].groupby(SETTING, sort=False):
        heads, mlp = group["heads"].to_numpy(float), group["mlp"].to_numpy(float)
        design = np.column_stack([np.ones(len(group)), heads > 0, heads, mlp])
        table.loc[group.index, "latency_ms"] = design @ _least_absolute(design, group["latency_ms"].to_numpy(float))
    return table


def _least_absolute(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficients minimising the summed absolute residual (median regression, a linear program). Why not least
    squares: a width timed while another process thrashed the cores can read 20x slow (seen: 510 ms rows among
    25 ms ones in a quick profile under load), and one such row would drag the whole plane; absolute residuals let
    the plane follow the other widths. Every fitted value is kept >= 0: a plane through a few noisy rows could
    otherwise give a narrow width a negative latency."""
    from scipy.optimize import linprog

    rows, columns = design.shape
    # variables: coefficients (free), then positive and negative residual parts (>= 0)
    cost = np.concatenate([np.zeros(columns), np.ones(2 * rows)])
    equality = np.hstack([design, np.eye(rows), -np.eye(rows)])            # design @ c + r+ - r- = target
    bounds = [(None, None)] * columns + [(0, None)] * (2 * rows)
    fitted_not_negative = np.hstack([-design, np.zeros((rows, 2 * rows))])  # every fitted value >= 0
    result = linprog(cost, A_ub=fitted_not_negative, b_ub=np.zeros(rows), A_eq=equality, b_eq=target,
                     bounds=bounds, method="highs")
    if result.status != 0:                                                   # cannot happen for a feasible LP
        raise UserError(f"the linear block fit failed ({result.message}): use --block-fit per-width")
    return result.x[:columns]


META_REQUIRED = {"device": str, "flow": str, "source": str, "model": dict}


def read_profile_meta(path: Path, hint: str) -> dict:
    """meta.json of a profile, its kind, schema and the fields every reader uses checked."""
    meta = read_json(path, "profile metadata", hint)
    if not isinstance(meta, dict) or meta.get("kind") != PROFILE_KIND or meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} is not a schema-{SCHEMA_VERSION} device profile: re-profile ({hint})")
    wrong = [k for k, kind in META_REQUIRED.items() if not isinstance(meta.get(k), kind)]
    if wrong or not isinstance(meta.get("environment", {}), dict):
        raise UserError(f"{path} lacks or mistypes {wrong or ['environment']}: re-profile ({hint})")
    return meta


def read_table(path: Path, hint: str) -> pd.DataFrame:
    """lut.csv with its columns and types checked: one line for an empty, truncated or hand-broken table."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable lookup table ({str(exc).splitlines()[0]}): {hint}") from None
    missing = set(LUT_COLUMNS) - set(table.columns)
    if missing:
        raise UserError(f"{path} lacks columns {sorted(missing)}: re-profile ({hint})")
    try:
        for column in ("tokens", "batch", "heads", "mlp"):
            table[column] = pd.to_numeric(table[column], errors="raise").astype(int)
        table["latency_ms"] = pd.to_numeric(table["latency_ms"], errors="raise").astype(float)
    except (ValueError, TypeError):
        raise UserError(f"{path} holds non-numeric tokens/batch/heads/mlp/latency_ms values: re-profile ({hint})") \
            from None
    bad_phase = set(table["phase"]) - {"prefill", "decode"}
    if bad_phase or not table["latency_ms"].map(math.isfinite).all() or set(table["component"]) - {"base", "block"}:
        raise UserError(f"{path} holds an unknown phase/component or a non-finite latency: re-profile ({hint})")
    table["phase"], table["dtype"] = table["phase"].astype(str), table["dtype"].astype(str)
    return table


class LookupTable:
    """A device/flow profile: per-setting base + per-width block latencies, with the metadata that made them."""

    def __init__(self, directory: Path, meta: dict, table: pd.DataFrame) -> None:
        self.directory, self.meta, self.table = directory, meta, table
        self._index = {(r.phase, int(r.tokens), int(r.batch), r.dtype, r.component, int(r.heads), int(r.mlp)):
                       float(r.latency_ms) for r in table.itertuples(index=False)}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "LookupTable":
        directory = Path(directory)
        hint = (f"make it with `amoeba profile --device {directory.parent.name} --flow {directory.name}` "
                "(`amoeba flows` lists the flows)")
        meta = read_profile_meta(directory / "meta.json", hint)
        lut_path = directory / "lut.csv"
        if not lut_path.is_file():
            raise UserError(f"{lut_path} not found: the profile is incomplete; {hint}")
        return cls(directory, meta, read_table(lut_path, hint))

    @property
    def estimator(self) -> str:
        """How the profile combined a model's passes (lut.ESTIMATORS); a measurement compared with its
        predictions combines its passes the same way."""
        return self.meta.get("design", {}).get("estimator", "median")

    @property
    def block_fit(self) -> str:
        """How per-width block latencies were fitted (lut.BLOCK_FITS); profiles made before the option: per-width."""
        return self.meta.get("design", {}).get("block_fit", "per-width")

    @property
    def name(self) -> str:
        return f"{self.meta['device']}/{self.meta['flow']}"

    @property
    def fingerprint(self) -> str:
        """Hash of the latencies a predictor reads (table + correction): studies made on an older table are not
        resumed with its stale latencies after a re-profile."""
        digest = hashlib.sha256()
        for name in ("lut.csv", "correction.json"):
            path = self.directory / name
            digest.update(path.read_bytes() if path.is_file() else b"-")
        return digest.hexdigest()[:12]

    def settings(self) -> list[Setting]:
        frame = self.table[SETTING].drop_duplicates()
        return [Setting(p, int(t), int(b), d) for p, t, b, d in frame.itertuples(index=False, name=None)]

    def setting(self, phase: str, tokens: int | None = None, batch: int = 1, dtype: str | None = None) -> Setting:
        """The table's setting for a phase (tokens/dtype default to the only one profiled)."""
        matches = [s for s in self.settings() if s.phase == phase and s.batch == batch
                   and (tokens is None or s.tokens == tokens) and (dtype is None or s.dtype == dtype)]
        if len(matches) != 1:
            have = "; ".join(s.label() for s in self.settings()) or "nothing"
            wanted = f"{phase} tokens={tokens or 'any'} batch={batch} dtype={dtype or 'any'}"
            problem = "is not in" if not matches else "is ambiguous in"
            raise UserError(f"{wanted} {problem} profile {self.name} (has: {have}); pass --tokens/--dtype or "
                            "profile that setting")
        return matches[0]

    def widths(self, setting: Setting) -> list[tuple[int, int]]:
        return sorted((h, m) for (p, t, b, d, c, h, m) in self._index
                      if (p, t, b, d) == (setting.phase, setting.tokens, setting.batch, setting.dtype) and c == "block")

    def base_ms(self, setting: Setting) -> float:
        return self._index[(setting.phase, setting.tokens, setting.batch, setting.dtype, "base", 0, 0)]

    def block_ms(self, setting: Setting, heads: int, mlp: int) -> float:
        key = (setting.phase, setting.tokens, setting.batch, setting.dtype, "block", heads, mlp)
        if key not in self._index:
            have = ", ".join(f"{h}h/{m}" for h, m in self.widths(setting))
            raise UserError(f"profile {self.name} has no block with {heads} heads and {mlp} MLP channels for "
                            f"{setting.label()} (has {have}); add it with `amoeba profile --device "
                            f"{self.meta['device']} --flow {self.meta['flow']} --mlp-widths ...`")
        return self._index[key]


def check_compatible(existing: dict, new: dict, directory: Path) -> None:
    """Refuse to add rows measured in another environment (device, libraries, threads) or for another model."""
    problems = []
    if existing.get("model") != new.get("model"):
        problems.append(f"model {existing.get('model')} vs {new.get('model')}")
    if existing.get("source") != new.get("source"):
        problems.append(f"source {existing.get('source')} vs {new.get('source')}")
    old_key, new_key = environment_key(existing.get("environment", {})), environment_key(new.get("environment", {}))
    problems += [f"{k} {old_key[k]!r} vs {new_key[k]!r}" for k in old_key if old_key[k] != new_key[k]]
    if problems:
        raise UserError(f"{directory} was measured in another environment ({'; '.join(problems)}): use another "
                        "--device name, or --overwrite to start this profile again")
