"""Profiling: harness statistics, the step function, lookup-table fit / round trip / resume / environment checks,
predictor arithmetic, and a contract test run over every flow available here."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch

from amoeba_search.errors import UserError
from amoeba_search.profiling import harness
from amoeba_search.profiling import lut as lut_mod
from amoeba_search.profiling import profile as profile_mod
from amoeba_search.profiling.flows import FLOWS
from amoeba_search.profiling.lut import LookupTable, MeasurementLog, Setting, fit_lut
from amoeba_search.profiling.predictor import Correction, Predictor, save_corrections, setting_key
from amoeba_search.profiling.profile import WidthGrid, build_profile, import_profile
from amoeba_search.profiling.step import KVStep, step_inputs
from amoeba_search.profiling.store import ProfileStore
from amoeba_search.subnet import ModelDims, Subnet

FAST = harness.StopRule(warmup=1, min_repeats=3, max_repeats=5, rel=0.5, max_seconds=1.0)
SETTINGS = [Setting("prefill", 8, 1, "float32"), Setting("decode", 8, 1, "float32")]


def test_median_interval_and_summary():
    samples = [10.0] * 19 + [100.0]
    stats = harness.summarize(samples)
    assert stats["median_ms"] == 10.0 and stats["p90_ms"] == 10.0 and stats["repeats"] == 20
    assert stats["ci95_pct"] == 0.0 and stats["cv_pct"] > 0
    low, high = harness.median_ci(sorted(range(100)))
    assert low < 50 < high and high - low < 25


def test_measure_stops_when_stable_and_calls_reset():
    calls = {"run": 0, "reset": 0}
    def run():  # a steady 2 ms step: a no-op's sub-microsecond timings are too noisy for any stop rule
        calls["run"] += 1
        time.sleep(0.002)

    result = harness.measure(run,
                             reset=lambda: calls.__setitem__("reset", calls["reset"] + 1),
                             rule=harness.StopRule(warmup=2, min_repeats=5, max_repeats=50, rel=1.0))
    assert result.converged and result.stats["repeats"] == 5
    assert calls["run"] == calls["reset"] == 7


def test_kvstep_matches_transformers(tiny):
    model = tiny.model
    ids, positions = step_inputs(model, "prefill", 6, 2)
    with torch.no_grad():
        logits, *present = KVStep(model)(ids, positions)
        reference = model(ids).logits[:, -1:]
        assert torch.allclose(logits, reference, atol=1e-5)
        new = torch.tensor([[5], [7]])
        step_logits, *_ = KVStep(model)(new, torch.tensor([[6], [6]]), *present)
        full = model(torch.cat([ids, new], dim=1)).logits[:, -1:]
    assert torch.allclose(step_logits, full, atol=1e-5)
    assert len(present) == 2 * model.config.num_hidden_layers


def test_fit_recovers_base_and_blocks():
    rows = [{"phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32", "layers": 0, "heads": 0, "mlp": 0,
             "median_ms": 2.0}]
    truth = {(6, 48): 1.5, (3, 24): 0.5}
    for (h, m), block in truth.items():
        for layers in (2, 5):
            rows.append({**rows[0], "layers": layers, "heads": h, "mlp": m, "median_ms": 2.0 + layers * block})
    table = fit_lut(pd.DataFrame(rows))
    base = table[table.component == "base"].latency_ms.item()
    assert base == pytest.approx(2.0)
    for (h, m), block in truth.items():
        got = table[(table.component == "block") & (table.heads == h) & (table.mlp == m)].latency_ms.item()
        assert got == pytest.approx(block)


@pytest.mark.parametrize("block_fit", ["per-width", "linear"])
def test_noisy_rows_never_fit_a_negative_latency(block_fit):
    """A 1-layer anchor timed slow and 2-layer rows timed fast (a thrashed machine, as in a loaded CI run): plain
    least squares puts a negative latency on a block; the fit keeps every part >= 0."""
    setting = {"phase": "decode", "tokens": 8, "batch": 1, "dtype": "q8_0"}
    rows = [{**setting, "layers": 1, "heads": 6, "mlp": 48, "median_ms": 40.0},
            {**setting, "layers": 2, "heads": 6, "mlp": 48, "median_ms": 12.0},
            {**setting, "layers": 2, "heads": 3, "mlp": 24, "median_ms": 10.0},
            {**setting, "layers": 2, "heads": 6, "mlp": 24, "median_ms": 11.0},
            {**setting, "layers": 2, "heads": 3, "mlp": 48, "median_ms": 11.5}]
    design = np.array([[1, 1], [1, 2]], float)                    # base + block (6, 48): the two rows of that width
    assert np.linalg.lstsq(design, np.array([40.0, 12.0]), rcond=None)[0][1] < 0
    table = fit_lut(pd.DataFrame(rows), block_fit=block_fit)
    assert (table.latency_ms >= 0).all()


def test_quiet_estimator_takes_the_fast_tail_of_bursty_passes():
    """Two passes per model; one pass of the 5-layer model is slowed 2x by a neighbour (median and p10 alike). The
    median estimator averages the burst into the block latency, the quiet one (lowest p10) does not."""
    base = {"phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32", "heads": 6, "mlp": 48}
    rows = []
    for layers, true_ms in ((0, 2.0), (5, 2.0 + 5 * 1.5)):
        for slowdown in (1.0, 2.0 if layers else 1.0):
            rows.append({**base, "layers": layers, "median_ms": true_ms * slowdown * 1.05,
                         "p10_ms": true_ms * slowdown})
    frame = pd.DataFrame(rows)

    def block(estimator: str) -> float:
        table = fit_lut(frame, estimator)
        return table[table.component == "block"].latency_ms.item()

    assert block("quiet") == pytest.approx(1.5)
    assert block("median") > 2.0
    with pytest.raises(UserError, match="estimator 'fastest' unknown"):
        fit_lut(frame, "fastest")
    with pytest.raises(UserError, match="needs every row's p10_ms"):
        fit_lut(frame.assign(p10_ms=float("nan")), "quiet")


def test_linear_block_fit_pools_the_noise_of_one_width():
    """Blocks that truly lie on a plane in (attention, heads, MLP): the linear fit returns them exactly; when one
    width's row is 30% slow (a burst), per-width copies the burst and the plane spreads a fraction of it."""
    def plane(h: int, m: int) -> float:
        return 0.1 + 0.2 * (h > 0) + 0.05 * h + 0.001 * m

    widths = [(h, m) for h in (0, 3, 6, 9) for m in (100, 200, 300)]
    setting = {"phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32"}
    rows = [{**setting, "layers": 0, "heads": 0, "mlp": 0, "median_ms": 2.0}]
    rows += [{**setting, "layers": 4, "heads": h, "mlp": m, "median_ms": 2.0 + 4 * plane(h, m)} for h, m in widths
             if h > 0]
    rows += [{**setting, "layers": 4, "heads": 0, "mlp": m, "median_ms": 2.0 + 4 * plane(0, m) + plane(9, 300)}
             for m in (100, 200, 300)]                                          # MLP-only rows lead with a block

    def blocks(frame: pd.DataFrame, fit: str) -> dict:
        table = fit_lut(frame, block_fit=fit)
        return {(h, m): v for h, m, v in table[table.component == "block"][["heads", "mlp", "latency_ms"]]
                .itertuples(index=False)}

    exact = blocks(pd.DataFrame(rows), "linear")
    assert all(exact[w] == pytest.approx(plane(*w)) for w in widths)
    burst = pd.DataFrame(rows)
    slow = (burst.heads == 6) & (burst.mlp == 200)
    burst.loc[slow, "median_ms"] *= 1.3
    per_width, linear = blocks(burst, "per-width"), blocks(burst, "linear")
    error = {name: abs(fit[(6, 200)] - plane(6, 200)) for name, fit in (("per-width", per_width), ("linear", linear))}
    assert error["linear"] < 0.25 * error["per-width"]
    # a row timed while another process thrashed the cores (20x slow) does not drag the other widths
    thrashed = pd.DataFrame(rows)
    thrashed.loc[(thrashed.heads == 6) & (thrashed.mlp == 100), "median_ms"] *= 20
    robust = blocks(thrashed, "linear")
    assert all(robust[w] == pytest.approx(plane(*w), rel=0.02) for w in widths)
    with pytest.raises(UserError, match="block fit 'cubic' unknown"):
        fit_lut(burst, block_fit="cubic")


def test_refit_changes_the_fit_without_timing(tiny_profile, tmp_path, monkeypatch):
    from amoeba_search.profiling.profile import refit_profile
    from amoeba_search.profiling.store import ProfileStore

    _, _, lut = tiny_profile
    directory = tmp_path / "dev" / "torch-eager"
    directory.mkdir(parents=True)
    for name in ("meta.json", "measurements.csv", "lut.csv"):
        (directory / name).write_bytes((lut.directory / name).read_bytes())
    (directory / "correction.json").write_text("{}")                       # fitted against the old table
    monkeypatch.setattr(profile_mod, "measure_model", lambda *a, **k: pytest.fail("timed something"))
    assert lut.block_fit == "linear" and lut.estimator == "median"         # the defaults of a new profile
    again = refit_profile(ProfileStore(tmp_path), "dev", "torch-eager", "quiet", "per-width")
    assert (again.estimator, again.block_fit) == ("quiet", "per-width")
    assert not (directory / "correction.json").exists()
    expected = fit_lut(MeasurementLog(directory).read(), "quiet", "per-width")
    assert again.table["latency_ms"].tolist() == pytest.approx(expected["latency_ms"].tolist(), rel=1e-4)


def test_fit_needs_base_information():
    rows = [{"phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32", "layers": 3, "heads": 6, "mlp": 48,
             "median_ms": 5.0}]
    with pytest.raises(UserError, match="cannot separate base"):
        fit_lut(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory, tiny_dir):
    from amoeba_search.models import load_model

    loaded = load_model(str(tiny_dir))
    grid = WidthGrid.for_model(ModelDims.from_config(loaded.model.config), (0.5, 1.0), heads=(3, 6))
    directory = tmp_path_factory.mktemp("profiles") / "dev" / "torch-eager"
    lut = build_profile(loaded, directory, "dev", "torch-eager", SETTINGS, grid, layers_per_row=2, rule=FAST,
                        passes=2, progress=False)
    return loaded, grid, lut


def test_default_rows_are_two_thirds_deep_at_most_20():
    from amoeba_search.profiling.timed_models import default_layers_per_row

    assert default_layers_per_row(30) == 20 and default_layers_per_row(80) == 20      # SmolLM2, Llama-3-70B
    assert default_layers_per_row(12) == 8 and default_layers_per_row(4) == 3
    assert default_layers_per_row(2, mlp_only_rows=True) == 1                        # + its lead block
    assert default_layers_per_row(1) == 1


def test_profile_without_layers_per_row_times_deep_rows(tiny, tmp_path):
    grid = WidthGrid.for_model(ModelDims.from_config(tiny.model.config), (1.0,), heads=(6,))
    lut = build_profile(tiny, tmp_path / "dev" / "torch-eager", "dev", "torch-eager", SETTINGS[1:], grid,
                        rule=FAST, passes=1, progress=False)
    depth = tiny.model.config.num_hidden_layers
    assert lut.meta["design"]["layers_per_row"] == round(2 * depth / 3)
    assert set(MeasurementLog(lut.directory).read()["layers"]) == {0, round(2 * depth / 3)}


def test_profile_round_trip_and_predictor(tiny_profile):
    loaded, grid, lut = tiny_profile
    again = LookupTable.load(lut.directory)
    assert again.meta["source"] == "measured" and again.meta["model"] == loaded.fingerprint
    assert {"device_name", "torch_threads", "flow_versions", "date"} <= set(again.meta["environment"])
    measurements = MeasurementLog(lut.directory).read()
    assert len(measurements) == 2 * len(SETTINGS) * (1 + len(grid.widths()))
    assert sorted(set(measurements["pass"])) == [0, 1]
    assert set(measurements["converged"]) <= {"True", "False"}
    # a resumed or re-measured profile (predictor_accuracy --interleave-profile) rebuilds the same grid from meta
    assert WidthGrid.from_design(again.meta["design"]) == grid
    mlp_only = WidthGrid(grid.heads, grid.mlp, True)
    assert WidthGrid.from_design({**again.meta["design"], "mlp_only_layers": True}) == mlp_only
    for setting in SETTINGS:
        assert sorted(again.widths(setting)) == sorted(grid.widths())
        dims = ModelDims.from_config(loaded.model.config)
        subnet = Subnet.uniform(dims, [0, 2, 4], heads=3, mlp=24)
        expected = again.base_ms(setting) + 3 * again.block_ms(setting, 3, 24)
        assert Predictor(again).predict_subnet_ms(setting, subnet, dims) == pytest.approx(expected)
        with pytest.raises(UserError, match="no block with 6 heads and 36 MLP channels"):
            Predictor(again).predict_ms(setting, [(6, 36)])


def test_correction_is_applied_when_saved(tiny_profile, tmp_path):
    _, _, lut = tiny_profile
    setting = SETTINGS[0]
    base, blocks = Predictor(lut).parts_ms(setting, [(6, 48)] * 2)
    fitted = Correction.fit([1.0, 2.0, 1.0], [3.0, 1.0, 5.0], [1.2 * 3 + 0.5, 1.2 + 1.0, 6.0 + 0.5])
    assert fitted.block_scale == pytest.approx(1.2) and fitted.base_scale == pytest.approx(0.5)
    before = lut.fingerprint
    save_corrections(lut.directory, {setting_key(setting): fitted}, fitted_on=3)
    try:
        assert lut.fingerprint != before          # studies made before the correction are not resumed
        assert Predictor(lut).predict_ms(setting, [(6, 48)] * 2) == pytest.approx(1.2 * blocks + 0.5 * base)
        assert Predictor(lut, use_correction=False).predict_ms(setting, [(6, 48)] * 2) == pytest.approx(base + blocks)
    finally:
        (lut.directory / "correction.json").unlink()


def test_resume_measures_only_missing_rows(tiny_profile, tmp_path, monkeypatch):
    loaded, grid, lut = tiny_profile
    directory = tmp_path / "dev" / "torch-eager"
    directory.mkdir(parents=True)
    for name in ("meta.json", "measurements.csv"):
        (directory / name).write_bytes((lut.directory / name).read_bytes())
    lines = (directory / "measurements.csv").read_text().splitlines(keepends=True)
    kept = lines[:4]                                   # header + 3 rows survive the "crash"
    (directory / "measurements.csv").write_text("".join(kept) + lines[4][: len(lines[4]) // 2])  # torn last line
    calls = []
    real = profile_mod.measure_model
    monkeypatch.setattr(profile_mod, "measure_model", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    build_profile(loaded, directory, "dev", "torch-eager", SETTINGS, grid, layers_per_row=2, rule=FAST,
                  passes=2, progress=False)
    assert len(calls) == len(lines) - 1 - 3
    assert len(MeasurementLog(directory).read()) == len(lines) - 1
    # the environment its rows were measured in (load warnings compare against it) survives the resume
    assert json.loads((directory / "meta.json").read_text())["environment"] == lut.meta["environment"]


def test_other_environment_is_refused(tiny_profile, tmp_path):
    loaded, grid, lut = tiny_profile
    directory = tmp_path / "dev" / "torch-eager"
    directory.mkdir(parents=True)
    meta = json.loads((lut.directory / "meta.json").read_text())
    meta["environment"]["device_name"] = "some other CPU"
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="another environment.*device_name"):
        build_profile(loaded, directory, "dev", "torch-eager", SETTINGS, grid, layers_per_row=2, rule=FAST,
                      progress=False)


def test_wrong_schema_is_refused(tiny_profile, tmp_path):
    _, _, lut = tiny_profile
    directory = tmp_path / "p"
    directory.mkdir()
    meta = json.loads((lut.directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(UserError, match="not a schema-1 device profile"):
        LookupTable.load(directory)
    with pytest.raises(UserError, match="profile metadata file .* not found"):
        LookupTable.load(tmp_path / "nothing")


def test_import_round_trip_and_errors(tiny, tmp_path):
    rows = [{"phase": "decode", "tokens": 128, "batch": 1, "dtype": "float16", "layers": layers, "heads": 6,
             "mlp": 48, "median_ms": 1.0 + 0.25 * layers} for layers in (0, 4, 8)]
    path = tmp_path / "trt.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    store = ProfileStore(tmp_path)
    lut = import_profile(tiny, path, store, "jetson", "tensorrt-llm")
    setting = lut.setting("decode")
    assert lut.meta["source"] == "imported" and lut.base_ms(setting) == pytest.approx(1.0)
    assert lut.block_ms(setting, 6, 48) == pytest.approx(0.25)
    assert lut.meta["model_dims"]["num_layers"] == 5                # predict and search can use it
    before = {p.name: p.read_bytes() for p in lut.directory.iterdir()}
    bad_frames = [pd.DataFrame(rows).drop(columns=["median_ms"]), pd.DataFrame(rows).assign(median_ms="fast"),
                  pd.DataFrame(rows).assign(heads=5), pd.DataFrame(rows).head(0), pd.DataFrame(rows).assign(layers=4)]
    for frame, message in zip(bad_frames, ["lacks columns \\['median_ms'\\]", "must be integers and \\*_ms numbers",
                                           "5 heads / 48 MLP channels is not a width", "header but no rows",
                                           "cannot separate base and block"]):
        frame.to_csv(path, index=False)
        with pytest.raises(UserError, match=message):
            import_profile(tiny, path, store, "jetson", "tensorrt-llm", overwrite=True)
        assert {p.name: p.read_bytes() for p in lut.directory.iterdir()} == before   # the previous state, untouched
    assert sorted(p.name for p in (tmp_path / "jetson").iterdir()) == ["tensorrt-llm"]   # no temporary dir left
    pd.DataFrame([{**r, "median_ms": 2.0 + 0.5 * r["layers"]} for r in rows]).to_csv(path, index=False)
    replaced = import_profile(tiny, path, store, "jetson", "tensorrt-llm")           # same rows: replaced, not mixed
    assert replaced.block_ms(setting, 6, 48) == pytest.approx(0.5) and len(replaced.table) == 2
    with pytest.raises(UserError, match="imported results were not timed in turns with a reference model"):
        import_profile(tiny, path, store, "jetson", "tensorrt-llm", estimator="paired")


def test_unknown_and_unavailable_flows():
    with pytest.raises(UserError, match="unknown flow 'torch-eagr': did you mean 'torch-eager'"):
        FLOWS.get("torch-eagr")
    with pytest.raises(UserError, match="flow 'tensorrt-llm' is unavailable here"):
        FLOWS.get("tensorrt-llm").require()
    with pytest.raises(UserError, match="does not run dtype 'float16'"):
        FLOWS.get("torch-eager").require("float16")


AVAILABLE = [n for n in FLOWS.names() if FLOWS.get(n).kind == "measured" and FLOWS.get(n).unavailable() is None]


@pytest.mark.parametrize("flow_name", AVAILABLE)
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_every_available_flow_times_both_phases(flow_name, phase, tiny):
    """Contract: every flow prepares a step for any extracted model and the harness times it."""
    flow = FLOWS.get(flow_name)
    source = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model = profile_mod.block_model(tiny.model, 2, 3, 24)
    setting = Setting(phase, 8, 1, flow.dtypes[0])
    row = profile_mod.measure_model(flow, model, setting, FAST)
    assert row["median_ms"] > 0 and row["repeats"] >= 3 and row["wall_s"] > 0
    config = model.config                  # K and V of the timed positions, at the flow's cache type
    positions = 8 + (phase == "decode")
    kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * positions * config.head_dim
    element = {"llama.cpp": 2.0}.get(flow_name, torch.empty((), dtype=getattr(torch, flow.dtypes[0])).element_size())
    kv_mib = profile_mod.tensor_mib(model, setting, flow.kv_cache_dtype(setting.dtype))[1]
    assert kv_mib == pytest.approx(kv_bytes * element / 2**20) and row["kv_mib"] == round(kv_mib, 3)
    assert row["weights_mib"] > 0
    assert len(row["samples_ms"].split()) == row["repeats"]
    # the source model is untouched, checked after the call: same shape, same weights, same dtype
    assert ModelDims.from_config(tiny.model.config).num_layers == 5
    after = tiny.model.state_dict()
    assert after.keys() == source.keys() and all(torch.equal(after[k], v) for k, v in source.items())


@pytest.mark.skipif("llama.cpp" not in AVAILABLE, reason="llama-cpp-python is not installed (make llama-cpp)")
def test_llama_cpp_profile_anchors_on_a_one_layer_model(tiny, tmp_path):
    """llama.cpp cannot load a 0-layer model: the per-call part is separated with a 1-layer row of the widest width."""
    dims = ModelDims.from_config(tiny.model.config)
    grid = WidthGrid.for_model(dims, (0.5, 1.0), heads=(3, 6))
    setting = Setting("decode", 8, 1, "q8_0")
    with pytest.raises(UserError, match="does not run dtype 'bfloat16'"):
        FLOWS.get("llama.cpp").require("bfloat16")
    lut = build_profile(tiny, tmp_path / "dev" / "llama.cpp", "dev", "llama.cpp", [setting], grid, layers_per_row=2,
                        rule=FAST, passes=1, progress=False)
    measured = MeasurementLog(lut.directory).read()
    assert sorted(set(measured["layers"])) == [1, 2]
    assert len(measured[measured["layers"] == 1]) == 1 and max(grid.widths()) == (6, 48)
    assert sorted(lut.widths(setting)) == sorted(grid.widths())
    assert Predictor(lut).predict_ms(setting, [(3, 24)] * 4) > 0


@pytest.mark.skipif("onnxruntime" not in AVAILABLE, reason="onnxruntime is not installed")
def test_onnx_exports_are_reused_only_for_the_same_model_and_step(tiny, monkeypatch):
    """Interleaved passes re-extract the same models: each (model, step) is exported once; any other weights or
    step shape is exported anew, so a session never times a graph of another model."""
    from amoeba_search.profiling.flows import onnxruntime_flow

    cache = onnxruntime_flow.ExportCache()
    monkeypatch.setattr(onnxruntime_flow, "EXPORTS", cache)
    flow = FLOWS.get("onnxruntime")
    model = profile_mod.block_model(tiny.model, 2, 3, 24)
    again = profile_mod.block_model(tiny.model, 2, 3, 24)             # re-extracted: same weights
    other = profile_mod.block_model(tiny.model, 2, 3, 24)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    decode = Setting("decode", 8, 1, "float32")
    for candidate in (model, again):
        profile_mod.measure_model(flow, candidate, decode, FAST)
    assert len(cache.paths) == 1
    profile_mod.measure_model(flow, other, decode, FAST)
    profile_mod.measure_model(flow, model, Setting("prefill", 8, 1, "float32"), FAST)
    assert len(cache.paths) == 3
    cache.limit_mib = cache.size_mib()                  # full: a new export is used once, the kept ones stay
    profile_mod.measure_model(flow, model, Setting("decode", 4, 1, "float32"), FAST)
    assert len(cache.paths) == 3 and all(p.is_file() for p in cache.paths.values())
    assert len(list(cache.directory.iterdir())) == 3

    def broken_export(path):
        path.write_bytes(b"half a file")
        raise RuntimeError("exporter failed")
    with pytest.raises(RuntimeError):                                # a failed export is neither kept nor left
        with cache.file("broken", broken_export):
            pass
    assert "broken" not in cache.paths and not (cache.directory / "broken").exists()


def test_pass_tails_tell_a_slow_tail_from_a_fast_one():
    """`quiet` suits rows whose passes only slow down; the diagnostic says which side of the middle pass is wider."""
    from amoeba_search.profiling.lut import CONFIG, pass_tails_pct

    def rows(phase, p10s):
        return [dict(zip(CONFIG, (phase, 8, 1, "float32", layers, 3, 24)), p10_ms=v, **{"pass": i})
                for layers in (0, 2) for i, v in enumerate(p10s)]
    frame = pd.DataFrame(rows("decode", [10.0, 10.1, 10.0, 14.0]) + rows("prefill", [7.0, 10.0, 10.1, 10.0]))
    tails = pass_tails_pct(frame)
    assert tails["decode"]["above_pct"] > 30 and tails["decode"]["below_pct"] < 1
    assert tails["prefill"]["below_pct"] > 25 and tails["prefill"]["above_pct"] < 1
    assert pass_tails_pct(frame[frame["pass"] == 0]) == {}            # one pass: nothing to compare


def test_paired_timing_divides_out_a_machine_that_changes_speed(monkeypatch):
    """A virtual clock: the model costs 1 unit, the reference 2, and the machine runs at 1x or 1.6x, switching
    after every pair of bursts. Timed in turns, each model sees both speeds and neither median is its cost at
    either speed, but the ratio of the medians is exact."""
    clock = {"now": 0.0, "calls": 0, "log": []}

    def step(name: str, cost: float):
        def run():
            clock["calls"] += 1
            clock["log"].append(name)
            pair = (clock["calls"] - 1) // (2 * (harness.BURST_WARMUP + harness.BURST))
            clock["now"] += cost * (1.6 if pair % 2 else 1.0) / 1e3
        return run

    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock["now"])
    rule = harness.StopRule(warmup=0, min_repeats=40, max_repeats=40, rel=0.0, max_seconds=1e9)
    model, reference = harness.measure_paired(step("m", 1.0), None, step("r", 2.0), None, rule=rule)
    assert model.stats["repeats"] == 40 and reference.stats["repeats"] == 40
    burst = harness.BURST_WARMUP + harness.BURST
    assert clock["log"][:2 * burst] == ["m"] * burst + ["r"] * burst        # bursts in turns
    assert {round(v, 6) for v in model.samples_ms} == {1.0, 1.6}
    assert {round(v, 6) for v in reference.samples_ms} == {2.0, 3.2}
    assert model.stats["median_ms"] == pytest.approx(1.3)
    assert model.stats["median_ms"] / reference.stats["median_ms"] == pytest.approx(0.5)


def test_paired_estimator_states_ratios_at_the_reference_level():
    base = {"phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32", "heads": 6, "mlp": 48}
    rows = []
    for layers, true_ms in ((0, 2.0), (5, 2.0 + 5 * 1.5)):
        for speed in (1.0, 1.3, 0.8):                    # the machine's speed in each pass: the ratio holds
            rows.append({**base, "layers": layers, "median_ms": true_ms * speed, "p10_ms": true_ms * speed,
                         "ref_median_ms": 4.0 * speed})
    frame = pd.DataFrame(rows)
    assert lut_mod.reference_levels(frame) == {("decode", 4, 1, "float32"): pytest.approx(4.0)}
    table = fit_lut(frame, "paired")
    assert table[table.component == "block"].latency_ms.item() == pytest.approx(1.5)
    assert table[table.component == "base"].latency_ms.item() == pytest.approx(2.0)
    with pytest.raises(UserError, match="needs rows timed in turns with the profile's reference model"):
        fit_lut(frame.assign(ref_median_ms=float("nan")), "paired")


def test_a_log_from_before_the_reference_columns_is_read_and_extended(tmp_path):
    log = MeasurementLog(tmp_path)
    old_columns = [c for c in lut_mod.MEASUREMENT_COLUMNS if c not in lut_mod.REFERENCE_COLUMNS]
    row = {"pass": 0, "phase": "decode", "tokens": 4, "batch": 1, "dtype": "float32", "layers": 2, "heads": 6,
           "mlp": 48, "median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.2, "cv_pct": 1, "ci95_pct": 1, "repeats": 5,
           "converged": True, "weights_mib": 1, "kv_mib": 0, "peak_mem_mib": "", "wall_s": 1, "samples_ms": "2.0"}
    pd.DataFrame([row], columns=old_columns).to_csv(log.path, index=False)
    assert log.read()["ref_median_ms"].isna().all() and len(log.read()) == 1
    log.append([{**row, "pass": 1, "ref_median_ms": 4.0, "ref_p10_ms": 3.9}])
    assert log.path.read_text().splitlines()[0].split(",") == lut_mod.MEASUREMENT_COLUMNS
    frame = log.read()
    assert frame["pass"].tolist() == [0, 1] and frame["ref_median_ms"].isna().tolist() == [True, False]


def test_paired_profile_times_every_row_with_its_reference(tiny_dir, tmp_path, tiny_profile, monkeypatch):
    from amoeba_search.models import load_model
    from amoeba_search.profiling.profile import reference_pairing

    loaded, grid, unpaired = tiny_profile
    assert reference_pairing(FLOWS.get("torch-eager"), loaded.model, unpaired, SETTINGS[1]) is None
    directory = tmp_path / "dev" / "torch-eager"
    lut = build_profile(load_model(str(tiny_dir)), directory, "dev", "torch-eager", SETTINGS[1:], grid,
                        layers_per_row=2, rule=FAST, passes=1, progress=False, estimator="paired")
    assert lut.meta["design"]["reference"] == [2, *max(grid.widths())]
    rows = MeasurementLog(directory).read()
    assert rows["ref_median_ms"].notna().all() and (rows["ref_median_ms"] > 0).all()
    pairing = reference_pairing(FLOWS.get("torch-eager"), loaded.model, lut, SETTINGS[1])
    assert pairing.level_ms == pytest.approx(rows["ref_median_ms"].median())
    measured = profile_mod.measured_latency(FLOWS.get("torch-eager"), loaded.model, SETTINGS[1], 1, "paired",
                                            pairing)
    assert measured["measured_ms"] > 0 and measured["estimator"] == "paired"
    monkeypatch.setattr(profile_mod, "measure_model", lambda *a, **k: pytest.fail("timed something"))
    lead = list(max(grid.widths()))
    with pytest.raises(UserError, match=re.escape(f"against reference model {[2, *lead]} (layers, heads, MLP "
                                                  f"channels), this run's would be {[1, *lead]}")):
        build_profile(loaded, directory, "dev", "torch-eager", SETTINGS[1:], grid, layers_per_row=1, rule=FAST,
                      passes=2, progress=False, estimator="paired")
    with pytest.raises(UserError, match="timed without the reference model"):     # before anything is timed
        build_profile(loaded, unpaired.directory, "dev", "torch-eager", SETTINGS, grid, layers_per_row=2,
                      rule=FAST, passes=3, progress=False, estimator="paired")
