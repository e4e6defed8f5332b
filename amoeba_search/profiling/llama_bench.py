"""Profiling a device the package is not installed on, with llama.cpp's own benchmark tool.

`write_kit` writes the GGUF set a lookup table needs (the 1-layer anchor and one k-layer model per width, as
`amoeba profile --flow llama.cpp` times them) with a kit.json manifest and a shell script that runs `llama-bench`
on every file and writes results.jsonl. `read_llama_bench` turns that JSONL (or llama-bench's JSON array) back
into profile rows: prefill = `-p P -n 0` (TTFT of P tokens), decode = `-p 0 -n G -d C` (G tokens after C cached
ones, per token: TPOT), median and p10/p90 of llama-bench's per-repetition samples.

Why G = 16 decode tokens a repetition and not 1: llama-bench refills the C-token context before every repetition,
so `-n 1` times each token right after a prefill, while llama-cpp-python (the native flow) and a server decode
token after token. On the 2-core Xeon, on the same GGUF files, `-n 1` ran 8-15% slower than back-to-back native
decode of 20-block models and `-n 16` within the noise of it (out-of-tree diagnosis, noisy host; the interleaved
benchmarks/llama_bench_kit.py is the check). The context grows by G-1 tokens during a repetition: at C=128 that
moves a 135M model's attention cost by well under 1% of a token's time.

Flash attention is set as the native flow sets it (flows.llama_cpp.FLASH_ATTENTION): llama-bench's default, `-fa
auto`, is on for a CPU, and with it on the kit predicted 7% less than the native (off) profile for uniform subnets."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import SCHEMA_VERSION, read_json, write_json_atomic
from ..errors import UserError
from ..families.base import model_dims
from ..models import LoadedModel
from .flows.llama_cpp import FLASH_ATTENTION
from .lut import Setting

KIT_FILE = "kit.json"
KIT_KIND = "amoeba_search.llama_bench_kit"
NAME = re.compile(r"^L(?P<layers>\d+)-h(?P<heads>\d+)-m(?P<mlp>\d+)\.gguf$")
GGUF_TYPES = {"float32": "f32", "float16": "f16", "q8_0": "q8_0", "q4_1": "q4_1"}

SCRIPT = """#!/bin/sh
# Run on the device (needs llama.cpp's llama-bench: LLAMA_BENCH=/path/to/llama-bench). Writes results.jsonl here;
# then, where amoeba_search is installed:
#   amoeba profile import --flow llama.cpp --device {device} {{KIT_DIR}}/results.jsonl
set -e
cd "$(dirname "$0")"
LLAMA_BENCH=${{LLAMA_BENCH:-llama-bench}}
THREADS=${{THREADS:-{threads}}}
: > results.jsonl.tmp
for pass in $(seq 1 {passes}); do
  for model in models/*.gguf; do
{commands}
  done
done
mv results.jsonl.tmp results.jsonl
echo "wrote $(pwd)/results.jsonl"
"""


DECODE_TOKENS = 16
FA_NAMES = {0: "off", 1: "on", -1: "auto"}            # llama-bench's JSON flash_attn values


def _commands(settings: list[Setting], repetitions: int, decode_tokens: int) -> str:
    lines = []
    for s in settings:
        test = f"-p {s.tokens} -n 0" if s.phase == "prefill" else f"-p 0 -n {decode_tokens} -d {s.tokens}"
        # -fa 0/1 (not off/on): older llama-bench builds, still on many devices, read only the number
        lines.append(f'    "$LLAMA_BENCH" -m "$model" {test} -r {repetitions} -t "$THREADS" -fa {int(FLASH_ATTENTION)} '
                     "-o jsonl >> results.jsonl.tmp")
    return "\n".join(lines)


def write_kit(loaded: LoadedModel, out: Path, device: str, settings: list[Setting], grid, layers_per_row: int | None = None,
              passes: int = 2, repetitions: int = 10, threads: int = 4, progress: bool = True,
              decode_tokens: int = DECODE_TOKENS) -> Path:
    """The GGUF set + kit.json + run.sh for `device`; one dtype for all settings (the GGUF weights)."""
    from tqdm.auto import tqdm

    from ..gguf_export import write_gguf
    from .timed_models import block_model, default_layers_per_row, lead_width

    dtypes = {s.dtype for s in settings}
    if len(dtypes) != 1 or next(iter(dtypes)) not in GGUF_TYPES:
        raise UserError(f"--dtype: one of {', '.join(GGUF_TYPES)} for a llama-bench kit, got {sorted(dtypes)}")
    if any(s.batch != 1 for s in settings):
        raise UserError("llama-bench times batch 1 here: use --batch 1")
    dtype = next(iter(dtypes))
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    widths = grid.widths()
    if layers_per_row is None:
        layers_per_row = default_layers_per_row(model_dims(loaded.model.config).num_layers, grid.mlp_only)
    configs = [(1, *max(widths))] + [(layers_per_row, h, m) for h, m in widths]
    files = {}
    for layers, heads, mlp in tqdm(configs, desc="llama-bench kit", unit="gguf", disable=not progress):
        name = f"L{layers}-h{heads}-m{mlp}.gguf"
        model = block_model(loaded.model, layers, heads, mlp, lead_width(widths))
        write_gguf(model, models / name, None, GGUF_TYPES[dtype])           # placeholder vocabulary: timing only
        files[name] = {"layers": layers, "heads": heads, "mlp": mlp}
    write_json_atomic(out / KIT_FILE, {
        "schema_version": SCHEMA_VERSION, "kind": KIT_KIND, "model": loaded.fingerprint, "device": device,
        "dtype": dtype, "settings": [s.__dict__ for s in settings], "layers_per_row": layers_per_row,
        "passes": passes, "repetitions": repetitions, "decode_tokens": decode_tokens,
        "flash_attention": int(FLASH_ATTENTION), "files": files,
        "note": "MLP-only rows (heads 0) hold one lead block of the widest width first, as amoeba profile times"})
    script = out / "run.sh"
    script.write_text(SCRIPT.format(device=device, threads=threads, passes=passes,
                                    commands=_commands(settings, repetitions, decode_tokens)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return out


def _records(path: Path) -> list[dict]:
    """llama-bench's -o jsonl (one object per line) or -o json (one array)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not llama-bench JSON output (not UTF-8 text)") from None
    try:
        if text.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not llama-bench JSON/JSONL output (line {exc.lineno}: {exc.msg}): run "
                        "llama-bench with -o jsonl, as the kit's run.sh does") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path} holds no llama-bench results (objects with n_prompt, n_gen, avg_ns)")
    return records


def read_llama_bench(path: Path, model_fingerprint: dict) -> pd.DataFrame:
    """Profile rows (import format) from a llama-bench JSONL written by a kit's run.sh; the kit.json beside it
    says which model, width and dtype each file is."""
    kit = read_json(path.parent / KIT_FILE, "llama-bench kit manifest",
                    "keep results.jsonl in the kit directory written by `amoeba profile kit`")
    if not isinstance(kit, dict) or kit.get("kind") != KIT_KIND:
        raise UserError(f"{path.parent / KIT_FILE} is not a kit manifest written by `amoeba profile kit`")
    if kit.get("model") != model_fingerprint:
        raise UserError(f"the kit was written for model {kit.get('model')}, not {model_fingerprint}: import with "
                        "that --model")
    rows = []
    for index, record in enumerate(_records(path)):
        where = f"{path} result {index + 1}"
        name = Path(str(record.get("model_filename", ""))).name
        if name not in kit["files"]:
            raise UserError(f"{where}: model file {name!r} is not one of the kit's GGUFs")
        try:
            n_prompt, n_gen, depth = int(record["n_prompt"]), int(record["n_gen"]), int(record.get("n_depth", 0))
            samples = [float(v) for v in record.get("samples_ns") or [record["avg_ns"]]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: needs integer n_prompt / n_gen / n_depth and avg_ns or samples_ns (llama-bench "
                            "-o jsonl)") from None
        if "flash_attn" in record and int(record["flash_attn"]) != int(FLASH_ATTENTION):
            raise UserError(f"{where}: timed with flash attention {FA_NAMES.get(int(record['flash_attn']), '?')}, the "
                            f"native llama.cpp flow with it {FA_NAMES[int(FLASH_ATTENTION)]}: rerun the kit's run.sh "
                            f"(it passes -fa {int(FLASH_ATTENTION)})")
        if n_gen == 0 and n_prompt > 0:
            phase, tokens, per = "prefill", n_prompt, 1
        elif n_prompt == 0 and n_gen > 0:
            phase, tokens, per = "decode", depth, n_gen
        else:
            raise UserError(f"{where}: a test mixes prompt and generation ({n_prompt} / {n_gen} tokens); the kit "
                            "times -p P -n 0 and -p 0 -n G -d C")
        ms = np.asarray(samples) / 1e6 / per                                  # per call (prefill) / token (decode)
        if not np.all(np.isfinite(ms)) or np.any(ms <= 0):
            raise UserError(f"{where}: timings must be finite and > 0")
        rows.append({"phase": phase, "tokens": tokens, "batch": 1, "dtype": kit["dtype"], **kit["files"][name],
                     "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                     "p90_ms": float(np.percentile(ms, 90))})
    frame = pd.DataFrame(rows)
    # Several passes over the kit time each model more than once: one row per model and setting, their median.
    keys = ["phase", "tokens", "batch", "dtype", "layers", "heads", "mlp"]
    return frame.groupby(keys, as_index=False).agg({"median_ms": "median", "p10_ms": "min", "p90_ms": "max"})
