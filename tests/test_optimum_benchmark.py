"""Profiling a device without amoeba_search through optimum-benchmark: `amoeba profile kit --flow torch-eager` writes
the model configs, kit.json, the optimum-benchmark config and run.sh; the benchmark.json files optimum-benchmark
leaves import into a profile. The results are built from a benchmark.json written by optimum-benchmark 0.6.0 on
this machine (tests/fixtures), so the reader is checked against the tool's real format. Where the tool is
installed ($AMOEBA_OPTIMUM_BENCHMARK: its executable), the real script runs and its results import."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
from transformers import AutoConfig

from amoeba_search.errors import UserError
from amoeba_search.profiling.lut import Setting
from amoeba_search.profiling.optimum_benchmark import DECODE_TOKENS, KIT_FILE, write_kit
from amoeba_search.profiling.profile import WidthGrid, import_profile
from amoeba_search.profiling.store import ProfileStore
from tests.test_cli import amoeba

TEMPLATE = Path(__file__).parent / "fixtures" / "optimum_benchmark_0.6.0_decode.json"
SETTINGS = [Setting("prefill", 16, 1, "float32"), Setting("decode", 16, 1, "float32")]
BASE_MS = {"prefill": 2.0, "decode": 0.5}
BLOCK_MS = {(3, 24): 0.3, (3, 48): 0.4, (6, 24): 0.5, (6, 48): 0.6}


def fake_results(kit_dir: Path, split_files: bool = False) -> Path:
    """The files run.sh leaves, from a known latency model: the real template with this test's model, shapes and
    latencies (prefill per run; decode per run = DECODE_TOKENS - 1 steps)."""
    template = json.loads(TEMPLATE.read_text())
    kit = json.loads((kit_dir / KIT_FILE).read_text())
    for name, shape in kit["files"].items():
        for setting in SETTINGS:
            ms = BASE_MS[setting.phase] + shape["layers"] * BLOCK_MS[(shape["heads"], shape["mlp"])]
            run = copy.deepcopy(template)
            config, report = run["config"], run["report"]
            config["name"] = f"{setting.phase}-{setting.tokens}"
            config["backend"]["model"] = str(kit_dir / "models" / name)
            config["scenario"]["input_shapes"]["sequence_length"] = setting.tokens
            target = "prefill" if setting.phase == "prefill" else "decode"
            per_run = ms if target == "prefill" else ms * (DECODE_TOKENS - 1)
            report[target]["latency"]["values"] = [per_run / 1e3 * f for f in (0.99, 1.0, 1.01)]
            where = kit_dir / "results" / "pass-1" / name / config["name"]
            where.mkdir(parents=True)
            if split_files:
                (where / "benchmark_config.json").write_text(json.dumps(config))
                (where / "benchmark_report.json").write_text(json.dumps(report))
            else:
                (where / "benchmark.json").write_text(json.dumps(run))
    return kit_dir / "results"


@pytest.fixture()
def kit_dir(tiny, tmp_path):
    grid = WidthGrid((3, 6), (24, 48), False)
    return write_kit(tiny, tmp_path / "kit", "a5000", "torch-eager", SETTINGS, grid, layers_per_row=2,
                     progress=False)


def test_the_kit_holds_the_timed_models_configs_and_a_script(tiny_dir, tmp_path):
    out = tmp_path / "kit"
    run = amoeba("profile", "kit", "--flow", "torch-eager", "--device", "a5000", "--model", tiny_dir, "--out", out,
                 "--heads", "3,6", "--mlp-widths", "0.5,1", "--layers-per-row", "2", "-P", "16", "-C", "16")
    assert run.returncode == 0, run.stderr
    kit = json.loads((out / KIT_FILE).read_text())
    assert kit["tool"] == "optimum-benchmark" and kit["flow"] == "torch-eager" and kit["dtype"] == "float32"
    assert sorted(kit["files"]) == ["L1-h6-m48", "L2-h3-m24", "L2-h3-m48", "L2-h6-m24", "L2-h6-m48"]
    config = AutoConfig.from_pretrained(out / "models" / "L2-h3-m24")
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (2, 3, 24)
    assert not list(out.rglob("*.safetensors"))                 # weights are made on the device
    script = (out / "run.sh").read_text()
    assert os.access(out / "run.sh", os.X_OK) and "sequence_length=16" in script and "name=decode-16" in script
    assert "no_weights: false" in (out / "amoeba_kit.yaml").read_text()


@pytest.mark.parametrize("split_files", [False, True])
def test_optimum_benchmark_results_import_into_the_latency_model(tiny, kit_dir, tmp_path, split_files):
    lut = import_profile(tiny, fake_results(kit_dir, split_files), ProfileStore(tmp_path / "profiles"), "a5000",
                         "torch-eager")
    for setting in lut.settings():
        assert lut.base_ms(setting) == pytest.approx(BASE_MS[setting.phase], rel=1e-3)
        for (heads, mlp), ms in BLOCK_MS.items():
            assert lut.block_ms(setting, heads, mlp) == pytest.approx(ms, rel=1e-3)
    assert lut.meta["source"] == "imported"


def _edit(results: Path, change) -> None:
    path = next(results.rglob("benchmark.json"))
    run = json.loads(path.read_text())
    change(run)
    path.write_text(json.dumps(run))


@pytest.mark.parametrize("change, message", [
    (lambda r: r["config"]["backend"].update(torch_dtype="bfloat16"), "ran in bfloat16, the kit is for float32"),
    (lambda r: r["config"]["backend"].update(model="/elsewhere/L9-h1-m1"), "is not one of the kit's"),
    (lambda r: r["config"]["scenario"]["input_shapes"].update(sequence_length=99), "do not match test"),
    (lambda r: r["report"].update(prefill=None, decode=None), "latency in seconds"),
    (lambda r: r.pop("report"), "not an optimum-benchmark benchmark.json")])
def test_a_damaged_result_is_one_line_and_writes_nothing(tiny, kit_dir, tmp_path, change, message):
    results = fake_results(kit_dir)
    _edit(results, change)
    with pytest.raises(UserError, match=message):
        import_profile(tiny, results, ProfileStore(tmp_path / "profiles"), "a5000", "torch-eager")
    assert not (tmp_path / "profiles" / "a5000").exists()


def test_a_kit_imports_only_under_its_own_flow(tiny, kit_dir, tmp_path):
    with pytest.raises(UserError, match="import it with --flow torch-eager"):
        import_profile(tiny, fake_results(kit_dir), ProfileStore(tmp_path / "p"), "a5000", "torch-compile")


@pytest.mark.skipif(not os.environ.get("AMOEBA_OPTIMUM_BENCHMARK"), reason="needs optimum-benchmark")
def test_the_kit_script_runs_optimum_benchmark_and_imports(tiny, kit_dir, tmp_path):
    executable = Path(os.environ["AMOEBA_OPTIMUM_BENCHMARK"])
    subprocess.run([str(kit_dir / "run.sh")], check=True, capture_output=True, env={
        **os.environ, "OPTIMUM_BENCHMARK": str(executable), "PYTHON": str(executable.parent / "python"),
        "THREADS": "1"})
    lut = import_profile(tiny, kit_dir / "results", ProfileStore(tmp_path / "p"), "a5000", "torch-eager")
    assert lut.block_ms(lut.setting("decode"), 6, 48) > 0
