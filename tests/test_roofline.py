"""Roofline estimator: spec validation, the arithmetic of one block, calibration recovering known factors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from amoeba_search.errors import UserError
from amoeba_search.profiling.lut import LookupTable, Setting
from amoeba_search.profiling.profile import WidthGrid
from amoeba_search.profiling.roofline import (DeviceSpec, block_work, calibrate, estimate_profile, load_spec,
                                              seconds, spec_names)
from amoeba_search.subnet import ModelDims

SETTINGS = [Setting("prefill", 64, 1, "float32"), Setting("decode", 64, 1, "float32")]


def test_shipped_specs_load():
    assert {"a5000", "jetson-orin-nx-16gb"} <= set(spec_names())
    a5000 = load_spec("a5000")
    assert a5000.memory_bandwidth_gbs == 768.0 and a5000.peak_tflops["float32"] == 27.8
    assert load_spec("jetson-orin-nx-16gb").memory_bandwidth_gbs == 102.4


def test_spec_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "peak_tflops": {"float32": 1.0}}))
    with pytest.raises(UserError, match="lacks \\['memory_bandwidth_gbs', 'efficiency'\\]"):
        load_spec(str(path))
    with pytest.raises(UserError, match="no device spec 'nope'"):
        load_spec("nope")
    path.write_text(json.dumps({"name": "bad", "peak_tflops": {"float32": 1.0}, "memory_bandwidth_gbs": 10,
                                "efficiency": {"bandwidth": 2.0, "compute": 0.5}}))
    with pytest.raises(UserError, match="efficiency needs"):
        load_spec(str(path))


def test_decode_block_is_bandwidth_bound_with_exact_bytes(tiny):
    dims = ModelDims.from_config(tiny.model.config)
    spec = DeviceSpec("x", 100.0, {"float32": 1e6}, {"bandwidth": 0.5, "compute": 1.0})
    setting = Setting("decode", 10, 1, "float32")
    work = block_work(dims, 6, 48, setting)
    # weights: q,o 2*72*96, k,v 2*72*32, mlp 3*72*48, norms 2*72; KV: 2 * 2 groups * 16 * 11 positions; fp32
    weights = 2 * 72 * 96 + 2 * 72 * 32 + 3 * 72 * 48 + 2 * 72
    kv = 2 * 2 * 16 * 11
    activations = 6 * 72 + 3 * 48
    assert work.bytes == 4 * (weights + kv + activations)
    assert seconds(work, spec, "float32") == pytest.approx(work.bytes / (100e9 * 0.5))


def test_calibration_recovers_known_factors(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    truth = DeviceSpec("truth", 20.0, {"float32": 0.05}, {"bandwidth": 0.4, "compute": 0.25},
                       {"per_call": 0.3, "per_block": 0.05})
    grid = WidthGrid.for_model(dims, (0.5, 1.0))
    measured = estimate_profile(tiny, truth, tmp_path / "truth" / "roofline", SETTINGS, grid)
    assert measured.meta["source"] == "roofline-estimate"
    start = replace(truth, efficiency={"bandwidth": 1.0, "compute": 1.0}, overhead_ms={})
    fitted = calibrate(start, measured, dims, tiny.model.config.vocab_size, SETTINGS)
    assert fitted.overhead_ms["per_call"] == pytest.approx(0.3, rel=0.1)
    assert fitted.overhead_ms["per_block"] == pytest.approx(0.05, rel=0.1)
    again = estimate_profile(tiny, fitted, tmp_path / "fit" / "roofline", SETTINGS, grid)
    for setting in SETTINGS:
        for h, m in grid.widths():
            assert again.block_ms(setting, h, m) == pytest.approx(measured.block_ms(setting, h, m), rel=0.06)


def test_estimated_profile_is_labelled(tiny, tmp_path):
    grid = WidthGrid.for_model(ModelDims.from_config(tiny.model.config), (1.0,))
    lut = estimate_profile(tiny, load_spec("a5000"), tmp_path / "a5000" / "roofline",
                           [Setting("decode", 64, 1, "float16")], grid)
    again = LookupTable.load(lut.directory)
    assert again.meta["source"] == "roofline-estimate" and "not a measurement" in again.meta["method"]
    with pytest.raises(UserError, match="has no peak_tflops for int8"):
        estimate_profile(tiny, load_spec("a5000"), tmp_path / "b", [Setting("decode", 8, 1, "int8")], grid)
