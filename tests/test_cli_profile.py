"""`amoeba flows / profile / predict / plot lut` end to end on the tiny model, and their one-line errors."""

from __future__ import annotations

import json

import pandas as pd

from amoeba_search.plot import lut_figure
from amoeba_search.profiling.lut import LookupTable
from tests.test_cli import amoeba


def test_flows_lists_every_flow_with_status():
    run = amoeba("flows")
    assert run.returncode == 0, run.stderr
    for name in ("torch-eager", "torch-compile", "onnxruntime", "cuda-eager", "cuda-graphs", "tensorrt-llm",
                 "mlc-llm", "roofline"):
        assert name in run.stdout
    assert "available" in run.stdout and "missing" in run.stdout


def test_profile_predict_plot(tiny_dir, tmp_path):
    root = tmp_path / "profiles"
    run = amoeba("profile", "--model", tiny_dir, "--flow", "torch-eager", "--device", "box", "--quick",
                 "--heads", "3,6", "--mlp-widths", "0.5,1", "--layers-per-row", "2", "-P", "8", "-C", "8",
                 "--profiles-dir", root, "--threads", "1")
    assert run.returncode == 0, run.stderr
    lut = LookupTable.load(root / "box" / "torch-eager")
    assert lut.meta["environment"]["torch_threads"] == 1
    assert len(lut.table) == 2 * (1 + 4 + 2)          # 2 phases x (base + 4 widths + 2 MLP-only blocks)
    spec = tmp_path / "s.json"
    assert amoeba("subnet", "--model", tiny_dir, "--keep", "0-2", "--heads", "3", "--mlp", "24",
                  "--out", spec).returncode == 0
    run = amoeba("predict", "--subnet", spec, "--device", "box", "--flow", "torch-eager", "--profiles-dir", root)
    assert run.returncode == 0, run.stderr
    assert "prefill P=8" in run.stdout and "decode C=8" in run.stdout
    run = amoeba("plot", "lut", "--device", "box", "--flow", "torch-eager", "--profiles-dir", root, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "plots" / "box-torch-eager-lut.png").stat().st_size > 1000     # not the profile's own figure
    assert not (root / "box" / "torch-eager" / "lut.png").exists()
    run = amoeba("plot", "lut", "--device", "box", "--flow", "torch-eager", "--profiles-dir", root, "--update-profile")
    assert run.returncode == 0, run.stderr
    assert (root / "box" / "torch-eager" / "lut.png").stat().st_size > 1000
    assert (root / "box" / "torch-eager" / "lut.svg").is_file()
    # a subnet whose width the table lacks: one line naming the width and the fix
    wide = tmp_path / "w.json"
    assert amoeba("subnet", "--model", tiny_dir, "--keep", "0-2", "--heads", "3", "--mlp", "12",
                  "--out", wide).returncode == 0
    run = amoeba("predict", "--subnet", wide, "--device", "box", "--flow", "torch-eager", "--profiles-dir", root)
    assert run.returncode == 2 and "no block with 3 heads and 12 MLP channels" in run.stderr
    assert "Traceback" not in run.stderr


def test_lut_figure_data(tiny_dir, tmp_path):
    root = tmp_path / "p"
    assert amoeba("profile", "--model", tiny_dir, "--flow", "roofline", "--device", "a5000", "--dtype", "float16", "--heads", "3,6",
                  "--mlp-widths", "0.5,1", "--profiles-dir", root).returncode == 0
    lut = LookupTable.load(root / "a5000" / "roofline")
    pd.DataFrame([{"subnet": "r0", "space": "uniform", "phase": "decode", "tokens": 128, "layers": 2, "heads": 6,
                   "mlp": 48, "measured_ms": 1.0, "composed_ms": 1.1, "corrected_cv_ms": None},
                  {"subnet": "h0", "space": "heterogeneous", "phase": "prefill", "tokens": 128, "layers": 2,
                   "heads": None, "mlp": None, "measured_ms": 40.0, "composed_ms": 41.0, "corrected_cv_ms": None}]
                 ).to_csv(lut.directory / "validation.csv", index=False)
    figure = lut_figure(lut)
    assert "roofline-estimate" in figure.title
    assert len(figure.panels) == 4             # prefill, decode tables; predicted vs measured per phase (scales differ)
    assert [s.label for s in figure.panels[0].series] == ["MLP-only (no attention)", "3 heads", "6 heads"]
    assert figure.panels[0].series[1].x == [24, 48]
    decode, prefill = figure.panels[2:]
    assert decode.diagonal and decode.title.startswith("decode") and decode.series[0].x == [1.0]
    assert [s.label for s in prefill.series] == ["heterogeneous: LUT composed"] and prefill.series[0].y == [41.0]


def test_profile_bad_input_is_one_line(tiny_dir, tmp_path):
    cases = [
        (("profile", "--model", tiny_dir, "--flow", "torch-eagr"), "did you mean 'torch-eager'"),
        (("profile", "--model", tiny_dir, "--flow", "cuda-eager"), "flow 'cuda-eager' is unavailable here"),
        (("profile", "--model", tiny_dir, "--phases", "train"), "--phases"),
        (("profile", "--model", tiny_dir, "--estimator", "mean"), "--estimator 'mean' unknown: use median or quiet"),
        (("profile", "import", tmp_path, "--flow", "llama.cpp", "--device", "x", "--model", tiny_dir, "--estimator",
          "p50"), "--estimator 'p50' unknown: use median or quiet"),
        (("profile", "--model", tiny_dir, "--flow", "roofline", "--device", "nowhere"), "no device spec 'nowhere'"),
        (("predict", "--subnet", tmp_path / "none.json", "--device", "x", "--flow", "torch-eager",
          "--profiles-dir", tmp_path), "amoeba profile --device x --flow torch-eager"),
    ]
    for args, message in cases:
        run = amoeba(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr and "Traceback" not in run.stderr


def test_profile_import_cli(tiny_dir, tmp_path):
    csv = tmp_path / "trt.csv"
    pd.DataFrame([{"phase": "decode", "tokens": 64, "batch": 1, "dtype": "float16", "layers": layers, "heads": 6,
                   "mlp": 48, "median_ms": 2 + 0.5 * layers} for layers in (0, 4)]).to_csv(csv, index=False)
    run = amoeba("profile", "import", csv, "--flow", "tensorrt-llm", "--device", "orin", "--model", tiny_dir,
                 "--profiles-dir", tmp_path)
    assert run.returncode == 0, run.stderr
    meta = json.loads((tmp_path / "orin" / "tensorrt-llm" / "meta.json").read_text())
    assert meta["source"] == "imported" and meta["environment"]["device_name"] == "orin"
    # an imported profile is usable: predict reads its model dims
    spec = tmp_path / "s.json"
    assert amoeba("subnet", "--model", tiny_dir, "--keep", "0-2", "--out", spec).returncode == 0
    run = amoeba("predict", "--subnet", spec, "--device", "orin", "--flow", "tensorrt-llm", "--profiles-dir", tmp_path)
    assert run.returncode == 0, run.stderr
    assert "decode C=64" in run.stdout and "3.50" in run.stdout          # base 2 + 3 blocks x 0.5 ms
