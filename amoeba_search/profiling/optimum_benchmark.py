"""Profiling a device the package is not installed on, with Hugging Face's optimum-benchmark (PyTorch backend).

`write_kit` writes what a lookup table needs as plain model configs (the 1-layer anchor and one k-layer model per
width, as `amoeba profile --flow torch-eager` times them; the script gives them random weights on the device, so
the kit is a few kB), an optimum-benchmark (hydra) config and a shell script that runs `optimum-benchmark` once
per model and test. `read_optimum_benchmark` turns the `benchmark.json` files it leaves
under results/ (or `benchmark_report.json` with its `benchmark_config.json`) back into profile rows:
prefill = the prefill latency of a prompt of P tokens (TTFT), decode = a short generation's decode latency after a
prompt of C tokens per generated token (TPOT at C+1..C+4 cached tokens).

Uniform blocks only: an attention-free (MLP-only) block is not a transformers config, so a kit has no MLP-only
rows and the imported profile does not serve `--space heterogeneous` with them."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import SCHEMA_VERSION, read_json, write_json_atomic
from ..errors import UserError
from ..families.base import model_dims
from ..models import LoadedModel
from .lut import Setting

KIT_FILE = "kit.json"
KIT_KIND = "amoeba_search.optimum_benchmark_kit"
CONFIG_NAME = "amoeba_kit"
NAME = re.compile(r"^L(?P<layers>\d+)-h(?P<heads>\d+)-m(?P<mlp>\d+)$")
TEST = re.compile(r"^(?P<phase>prefill|decode)-(?P<tokens>\d+)$")
FLOW_BACKEND = {"torch-eager": "false", "torch-compile": "true"}        # backend.torch_compile
DTYPES = ("float32", "bfloat16", "float16")
DECODE_TOKENS = 5            # a decode test generates this many tokens: 4 decode steps after the first

CONFIG = """# optimum-benchmark config of an amoeba_search kit; run.sh sets the model, test and output dir per run.
defaults:
  - benchmark
  - scenario: inference
  - launcher: process
  - backend: pytorch
  - _self_

name: amoeba-kit
backend:
  device: {device}
  no_weights: false
  torch_dtype: {dtype}
  torch_compile: {compile}
  task: text-generation
scenario:
  latency: true
  memory: false
  warmup_runs: {warmup}
  iterations: {iterations}
  duration: 0
  input_shapes:
    batch_size: 1
    sequence_length: 128
hydra:
  job:
    chdir: true
"""

SCRIPT = """#!/bin/sh
# Run on the device where optimum-benchmark is installed (`pip install optimum-benchmark`; OPTIMUM_BENCHMARK=...
# to use another executable). Leaves results/pass-K/MODEL/TEST/benchmark.json; then, where amoeba_search is
# installed:
#   amoeba profile import --flow {flow} --device {device} {{KIT_DIR}}/results
set -e
KIT=$(cd "$(dirname "$0")" && pwd)
OPTIMUM_BENCHMARK=${{OPTIMUM_BENCHMARK:-optimum-benchmark}}
PYTHON=${{PYTHON:-python3}}
THREADS=${{THREADS:-{threads}}}
export LOG_TO_FILE=0 OVERRIDE_BENCHMARKS=1
# Random weights for every config, made here once: timing does not depend on their values, and
# optimum-benchmark's no_weights mode needs a Hub repo, not a local directory.
"$PYTHON" - "$KIT"/models/*/ <<'PY'
import sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
for path in sys.argv[1:]:
    if not (Path(path) / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), torch_dtype=torch.{dtype})
        model.save_pretrained(path)
PY
for pass in $(seq 1 {passes}); do
  for model in "$KIT"/models/*/; do
    name=$(basename "$model")
{commands}
  done
done
echo "wrote $KIT/results"
"""


def _commands(settings: list[Setting]) -> str:
    lines = []
    for s in settings:
        test = f"{s.phase}-{s.tokens}"
        new_tokens = 2 if s.phase == "prefill" else DECODE_TOKENS
        lines.append(f'    "$OPTIMUM_BENCHMARK" --config-dir "$KIT" --config-name {CONFIG_NAME} name={test} '
                     f'backend.model="$KIT/models/$name" backend.intra_op_num_threads="$THREADS" '
                     f'scenario.input_shapes.sequence_length={s.tokens} scenario.new_tokens={new_tokens} '
                     f'hydra.run.dir="$KIT/results/pass-$pass/$name/{test}"')
    return "\n".join(lines)


def write_kit(loaded: LoadedModel, out: Path, device: str, flow: str, settings: list[Setting], grid,
              layers_per_row: int | None = None, passes: int = 2, iterations: int = 10, threads: int = 4,
              target: str = "cpu", progress: bool = True) -> Path:
    """Configs + kit.json + the optimum-benchmark config + run.sh for `device`; one dtype for all settings."""
    from tqdm.auto import tqdm

    from .timed_models import block_model, default_layers_per_row

    if flow not in FLOW_BACKEND:
        raise UserError(f"--flow {flow!r}: an optimum-benchmark kit times {', '.join(FLOW_BACKEND)}")
    dtypes = {s.dtype for s in settings}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        raise UserError(f"--dtype: one of {', '.join(DTYPES)} for an optimum-benchmark kit, got {sorted(dtypes)}")
    if any(s.batch != 1 for s in settings):
        raise UserError("the kit times batch 1: use --batch 1")
    dtype = next(iter(dtypes))
    widths = [w for w in grid.widths() if w[0] > 0]
    if layers_per_row is None:
        layers_per_row = default_layers_per_row(model_dims(loaded.model.config).num_layers)
    configs = [(1, *max(widths))] + [(layers_per_row, h, m) for h, m in widths]
    files = {}
    for layers, heads, mlp in tqdm(configs, desc="optimum-benchmark kit", unit="config", disable=not progress):
        name = f"L{layers}-h{heads}-m{mlp}"
        config = block_model(loaded.model, layers, heads, mlp).config      # the extracted model's exact config
        config.save_pretrained(out / "models" / name)
        files[name] = {"layers": layers, "heads": heads, "mlp": mlp}
    (out / f"{CONFIG_NAME}.yaml").write_text(CONFIG.format(device=target, dtype=dtype, compile=FLOW_BACKEND[flow],
                                                           warmup=3, iterations=iterations))
    write_json_atomic(out / KIT_FILE, {
        "schema_version": SCHEMA_VERSION, "kind": KIT_KIND, "tool": "optimum-benchmark", "model": loaded.fingerprint,
        "device": device, "flow": flow, "dtype": dtype, "settings": [s.__dict__ for s in settings],
        "layers_per_row": layers_per_row, "passes": passes, "iterations": iterations, "files": files,
        "note": "no MLP-only rows: an attention-free block is not a transformers config"})
    script = out / "run.sh"
    script.write_text(SCRIPT.format(device=device, flow=flow, threads=threads, passes=passes, dtype=dtype,
                                    commands=_commands(settings)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return out


def _benchmarks(results: Path) -> list[tuple[Path, dict, dict]]:
    """(where, config, report) of every run under `results`: optimum-benchmark's benchmark.json, or its
    benchmark_report.json with the benchmark_config.json beside it."""
    found = []
    for path in sorted(results.rglob("benchmark.json")):
        data = read_json(path, "optimum-benchmark result", "re-run the kit's run.sh")
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or \
                not isinstance(data.get("report"), dict):
            raise UserError(f"{path} is not an optimum-benchmark benchmark.json (config + report)")
        found.append((path, data["config"], data["report"]))
    for path in sorted(results.rglob("benchmark_report.json")):
        if (path.parent / "benchmark.json").is_file():
            continue
        config = read_json(path.parent / "benchmark_config.json", "optimum-benchmark config",
                           "keep benchmark_config.json beside benchmark_report.json")
        found.append((path, config, read_json(path, "optimum-benchmark report", "re-run the kit's run.sh")))
    if not found:
        raise UserError(f"{results} holds no optimum-benchmark results (benchmark.json or benchmark_report.json): "
                        "run the kit's run.sh on the device first")
    return found


def _latency_values(report: dict, target: str, where: Path) -> list[float]:
    latency = (report.get(target) or {}).get("latency") if isinstance(report.get(target), dict) else None
    if not isinstance(latency, dict) or latency.get("unit") != "s" or not isinstance(latency.get("values"), list) \
            or not latency["values"]:
        raise UserError(f"{where}: no {target} latency in seconds (run optimum-benchmark's inference scenario with "
                        "latency: true on the PyTorch backend, as the kit's run.sh does)")
    try:
        ms = np.asarray([float(v) for v in latency["values"]]) * 1e3
    except (TypeError, ValueError):
        raise UserError(f"{where}: {target} latency values must be numbers") from None
    if not np.all(np.isfinite(ms)) or np.any(ms <= 0):
        raise UserError(f"{where}: {target} latencies must be finite and > 0")
    return ms.tolist()


def read_optimum_benchmark(results: Path, model_fingerprint: dict, flow: str) -> pd.DataFrame:
    """Profile rows (import format) from a kit's results directory; the kit.json above it says which model,
    width and dtype each config is."""
    kit = read_json(results.parent / KIT_FILE, "optimum-benchmark kit manifest",
                    "import the results/ directory inside the kit written by `amoeba profile kit`")
    if not isinstance(kit, dict) or kit.get("kind") != KIT_KIND:
        raise UserError(f"{results.parent / KIT_FILE} is not an optimum-benchmark kit manifest written by "
                        "`amoeba profile kit`")
    if kit.get("model") != model_fingerprint:
        raise UserError(f"the kit was written for model {kit.get('model')}, not {model_fingerprint}: import with "
                        "that --model")
    if kit.get("flow") != flow:
        raise UserError(f"the kit times flow {kit.get('flow')!r}: import it with --flow {kit.get('flow')}")
    rows = []
    for where, config, report in _benchmarks(results):
        backend, scenario = config.get("backend") or {}, config.get("scenario") or {}
        name = Path(str(backend.get("model", ""))).name
        test = TEST.match(str(config.get("name", "")))
        if name not in kit["files"] or not test:
            raise UserError(f"{where}: model {name!r} / test {config.get('name')!r} is not one of the kit's (run "
                            "the kit's own run.sh)")
        shapes = scenario.get("input_shapes") or {}
        if int(shapes.get("sequence_length", -1)) != int(test["tokens"]) or int(shapes.get("batch_size", 1)) != 1:
            raise UserError(f"{where}: input shapes {shapes} do not match test {test.group(0)} at batch 1")
        if str(backend.get("torch_dtype")) != kit["dtype"]:
            raise UserError(f"{where}: ran in {backend.get('torch_dtype')}, the kit is for {kit['dtype']}")
        if test["phase"] == "prefill":
            ms = _latency_values(report, "prefill", where)
        else:
            # decode = the whole generation after the first token: new_tokens - 1 forward passes per run. (Its
            # per_token list is not used: optimum-benchmark 0.6.0 appends every earlier run's intervals again on
            # each run, inter-run gaps included.)
            steps = int((scenario.get("generate_kwargs") or {}).get("max_new_tokens", 0)) - 1
            if steps < 1:
                raise UserError(f"{where}: a decode test needs max_new_tokens >= 2 (the kit's run.sh sets "
                                f"{DECODE_TOKENS})")
            ms = [v / steps for v in _latency_values(report, "decode", where)]
        rows.append({"phase": test["phase"], "tokens": int(test["tokens"]), "batch": 1, "dtype": kit["dtype"],
                     **kit["files"][name], "median_ms": float(np.median(ms)),
                     "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90))})
    frame = pd.DataFrame(rows)
    # Several passes time each model more than once: one row per model and setting, their median.
    keys = ["phase", "tokens", "batch", "dtype", "layers", "heads", "mlp"]
    return frame.groupby(keys, as_index=False).agg({"median_ms": "median", "p10_ms": "min", "p90_ms": "max"})

