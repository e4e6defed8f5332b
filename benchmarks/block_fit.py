"""Claim: fitting every width's block latency on one plane (lut.BLOCK_FITS "linear") predicts held-out subnets better
than one free value per width ("per-width"), because it pools the noise of every row of the table.

For every profile under device_profiles/ that keeps both its raw rows (measurements.csv) and a validation
(validation.csv: random uniform subnets timed end to end by benchmarks/predictor_accuracy.py, never used by the
fit), the table is fitted both ways from the same rows with the profile's own estimator, and each validation
subnet's latency is composed (base + depth x block) and compared with what was measured. Nothing is timed here.

Writes benchmarks/results/block_fit.json and block_fit.md."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
from _common import RESULTS, setup

from amoeba_search.artifacts import environment, write_json_atomic
from amoeba_search.profiling.lut import BLOCK_FITS, SETTING, LookupTable, MeasurementLog, fit_lut



def compare(lut: LookupTable) -> list[dict]:
    """Composed-latency errors of the profile's validation subnets under each block fit, per setting."""
    measurements = MeasurementLog(lut.directory).read()
    validation = pd.read_csv(lut.directory / "validation.csv")
    validation = validation[validation["subnet"].str.startswith("r")]          # uniform random subnets
    fits = {fit: fit_lut(measurements, lut.estimator, fit) for fit in BLOCK_FITS}
    rows = []
    for setting, _ in fits["per-width"].groupby(SETTING, sort=True):
        phase, tokens, batch, dtype = setting
        held_out = validation[(validation["phase"] == phase) & (validation["tokens"] == tokens)]
        if held_out.empty:
            continue
        row = {"device": lut.meta["device"], "flow": lut.meta["flow"], "phase": phase, "tokens": int(tokens),
               "batch": int(batch), "dtype": dtype, "n": len(held_out), "estimator": lut.estimator,
               "profile_block_fit": lut.block_fit}
        for fit, table in fits.items():
            part = table[(table["phase"] == phase) & (table["tokens"] == tokens) & (table["batch"] == batch)
                         & (table["dtype"] == dtype)]
            base = float(part[part["component"] == "base"]["latency_ms"].iloc[0])
            block = {(int(h), int(m)): float(v) for h, m, v in part[part["component"] == "block"][
                ["heads", "mlp", "latency_ms"]].itertuples(index=False)}
            errors = [100 * abs(base + r.layers * block[(int(r.heads), int(r.mlp))] - r.measured_ms) / r.measured_ms
                      for r in held_out.itertuples(index=False)]
            row[f"{fit}_mape_pct"] = round(statistics.fmean(errors), 2)
            row[f"{fit}_within_5_pct"] = round(100 * sum(e <= 5 for e in errors) / len(errors), 1)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=Path(__file__).resolve().parent.parent / "device_profiles")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = setup(1)
    rows = []
    for directory in sorted(p.parent for p in args.profiles.glob("*/*/validation.csv")):
        if (directory / "measurements.csv").is_file():
            rows += compare(LookupTable.load(directory))
    better = sum(r["linear_mape_pct"] < r["per-width_mape_pct"] for r in rows)
    record = {"rows": rows, "linear_better": better, "tables": len(rows),
              "details": {"command": command, "environment": environment(),
                          "held_out": "validation.csv random uniform subnets (r*), composed without correction"}}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "block_fit.json", record)
    lines = ["# Block fit: one plane for all widths vs one value per width", "", f"`{command}`. " + __doc__.split(
        "\n\n")[1].replace("\n", " "), "",
             "| device | flow | dtype | phase | n | estimator | per-width MAPE % | within ±5% | linear MAPE % | "
             "within ±5% |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['flow']} | {r['dtype']} | {r['phase']} | {r['n']} | {r['estimator']} | "
                     f"{r['per-width_mape_pct']:.2f} | {r['per-width_within_5_pct']:.0f}% | "
                     f"{r['linear_mape_pct']:.2f} | {r['linear_within_5_pct']:.0f}% |")
    lines += ["", f"Linear has the lower MAPE on {better} of {len(rows)} tables."]
    (args.results / "block_fit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
