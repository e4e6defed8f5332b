"""Profiling a device without amoeba_search: `amoeba profile kit` writes the GGUF set, kit.json and a llama-bench
script; llama-bench's JSONL imports into a profile (MLP-only rows with their lead block). Where a llama-bench
binary exists ($AMOEBA_LLAMA_BENCH), the real script runs and its file imports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from amoeba_search.errors import UserError
from amoeba_search.profiling.llama_bench import KIT_FILE, write_kit
from amoeba_search.profiling.lut import Setting
from amoeba_search.profiling.profile import WidthGrid, import_profile
from amoeba_search.profiling.store import ProfileStore

SETTINGS = [Setting("prefill", 16, 1, "float32"), Setting("decode", 16, 1, "float32")]
BASE_MS = {"prefill": 2.0, "decode": 0.5}
BLOCK_MS = {(3, 24): 0.3, (3, 48): 0.4, (6, 24): 0.5, (6, 48): 0.6, (0, 24): 0.1, (0, 48): 0.2}


def fake_llama_bench(kit_dir: Path) -> Path:
    """What llama-bench -o jsonl prints for the kit's tests, from a known latency model (lead block included)."""
    kit = json.loads((kit_dir / KIT_FILE).read_text())
    lines = []
    for name, shape in kit["files"].items():
        for phase in ("prefill", "decode"):
            blocks = shape["layers"] * BLOCK_MS[(shape["heads"], shape["mlp"])] + (
                BLOCK_MS[(6, 48)] if shape["heads"] == 0 else 0.0)
            ms = BASE_MS[phase] + blocks
            test = {"n_prompt": 16, "n_gen": 0, "n_depth": 0} if phase == "prefill" else {
                "n_prompt": 0, "n_gen": kit["decode_tokens"], "n_depth": 16}
            calls = max(1, test["n_gen"])                   # a decode sample times n_gen tokens
            samples = [int(ms * 1e6 * f * calls) for f in (0.99, 1.0, 1.01)]
            lines.append(json.dumps({"model_filename": f"models/{name}", "model_type": "deci ?B F32", **test,
                                     "flash_attn": 0, "avg_ns": samples[1], "stddev_ns": 1000,
                                     "samples_ns": samples}))
    path = kit_dir / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def kit_dir(tiny, tmp_path):
    pytest.importorskip("gguf")
    grid = WidthGrid((3, 6), (24, 48), True)
    return write_kit(tiny, tmp_path / "kit", "toybox", SETTINGS, grid, layers_per_row=2, progress=False)


def test_kit_files_and_a_llama_bench_import(tiny, kit_dir, tmp_path):
    kit = json.loads((kit_dir / KIT_FILE).read_text())
    assert len(kit["files"]) == 1 + 4 + 2 and all((kit_dir / "models" / f).is_file() for f in kit["files"])
    script = (kit_dir / "run.sh").read_text()
    assert "-p 16 -n 0" in script and "-p 0 -n 16 -d 16" in script and os.access(kit_dir / "run.sh", os.X_OK)
    assert script.count("-fa 0") == 2 and kit["flash_attention"] == 0        # as the native flow times
    lut = import_profile(tiny, fake_llama_bench(kit_dir), ProfileStore(tmp_path / "profiles"), "toybox", "llama.cpp")
    for setting in SETTINGS:
        setting = lut.setting(setting.phase)
        assert lut.base_ms(setting) == pytest.approx(BASE_MS[setting.phase], rel=1e-4)
        for (heads, mlp), ms in BLOCK_MS.items():
            assert lut.block_ms(setting, heads, mlp) == pytest.approx(ms, rel=1e-3, abs=1e-4)
    assert lut.meta["source"] == "imported"


def test_a_quiet_import_fits_each_row_fast_tail(tiny, kit_dir, tmp_path):
    """--estimator quiet: every row's p10 of llama-bench's samples (0.99/1.00/1.01 x ms here), not its median."""
    lut = import_profile(tiny, fake_llama_bench(kit_dir), ProfileStore(tmp_path / "profiles"), "toybox", "llama.cpp",
                         estimator="quiet")
    tail = float(np.percentile([0.99, 1.0, 1.01], 10))                  # 0.992
    assert lut.estimator == "quiet"
    for setting in SETTINGS:
        setting = lut.setting(setting.phase)
        assert lut.base_ms(setting) == pytest.approx(tail * BASE_MS[setting.phase], rel=1e-4)
        assert lut.block_ms(setting, 6, 48) == pytest.approx(tail * BLOCK_MS[(6, 48)], rel=1e-3)
    with pytest.raises(UserError, match="estimator 'mean' unknown"):
        import_profile(tiny, kit_dir / "results.jsonl", ProfileStore(tmp_path / "p2"), "toybox", "llama.cpp",
                       estimator="mean")


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.replace('"n_prompt": 0', '"n_prompt": 5'), "mixes prompt"),
    (lambda t: t.replace("models/L", "models/X"), "not one of the kit's GGUFs"),
    (lambda t: t[: t.index("\n") + 20], "not llama-bench JSON"),
    (lambda t: t.replace('"avg_ns"', '"avg"').replace('"samples_ns"', '"s"'), "avg_ns or samples_ns"),
    (lambda t: t.replace('"flash_attn": 0', '"flash_attn": -1', 1), "flash attention auto, the native llama.cpp "
                                                                      "flow with it off: rerun the kit's run.sh")])
def test_a_damaged_llama_bench_file_is_one_line(tiny, kit_dir, tmp_path, damage, message):
    path = fake_llama_bench(kit_dir)
    path.write_text(damage(path.read_text()))
    with pytest.raises(UserError, match=message):
        import_profile(tiny, path, ProfileStore(tmp_path / "profiles"), "toybox", "llama.cpp")
    assert not (tmp_path / "profiles" / "toybox").exists()


@pytest.mark.skipif(not os.environ.get("AMOEBA_LLAMA_BENCH"), reason="needs a llama-bench binary")
def test_the_kit_script_runs_llama_bench_and_imports(tiny, kit_dir, tmp_path):
    subprocess.run([str(kit_dir / "run.sh")], check=True, env={**os.environ, "LLAMA_BENCH":
                                                                 os.environ["AMOEBA_LLAMA_BENCH"], "THREADS": "1"})
    lut = import_profile(tiny, kit_dir / "results.jsonl", ProfileStore(tmp_path / "p"), "toybox", "llama.cpp")
    assert lut.block_ms(lut.setting("decode"), 6, 48) > 0
