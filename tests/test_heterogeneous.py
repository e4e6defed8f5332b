"""Heterogeneous subnets: the exact solver equals brute force on additive scores, replace-one-block scores mean
what they say (and resume), a per-layer subnet extracts to a checkpoint and a GGUF that compute what the in-place
view computes, and `amoeba search --space heterogeneous` hands over a subnet under the target or refuses in
one line."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from amoeba_search.data import read_text
from amoeba_search.errors import UserError
from amoeba_search.evaluate import token_logprobs
from amoeba_search.extract import extract_model
from amoeba_search.search.heterogeneous import block_budget_ms, brute_force, solve
from amoeba_search.selection import blocks as blocks_module
from amoeba_search.selection.blocks import REMOVED, score_blocks
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.width import heterogeneous_subnet
from amoeba_search.subnet import ModelDims
from amoeba_search.view import subnet_view

from .test_search import context, world  # noqa: F401  (the module-scoped tiny strategy + estimated profiles)


def random_problem(layers: int, seed: int):
    rng = random.Random(seed)
    variants = [(h, m) for h in (3, 6) for m in (24, 48)]
    block_ms = {v: rng.uniform(0.5, 2.0) for v in variants}
    scores = [{REMOVED: rng.uniform(0, 3), **{v: rng.uniform(0, 1) for v in variants}} for _ in range(layers)]
    return scores, block_ms


@pytest.mark.parametrize("seed", range(6))
def test_solver_returns_the_brute_force_optimum(seed):
    scores, block_ms = random_problem(6, seed)
    full_ms = 6 * max(block_ms.values())
    for share in (0.15, 0.4, 0.65, 0.9, 1.0):
        budget = share * full_ms
        exact, *rest = solve(scores, block_ms, budget, top_k=4)                  # MILP with no-good cuts
        reference = brute_force(scores, block_ms, budget)
        assert exact.score == pytest.approx(reference.score, abs=1e-9)
        (pareto,) = solve(scores, block_ms, budget)                               # the Pareto-frontier DP
        assert pareto.score == pytest.approx(reference.score, abs=1e-9) and pareto.blocks_ms <= budget + 1e-9
        assert pareto.score == pytest.approx(sum(layer[v] for layer, v in zip(scores, pareto.shapes)), abs=1e-9)
        ranked = [exact] + rest
        assert all(a.score <= b.score + 1e-9 for a, b in zip(ranked, ranked[1:]))      # best first
        assert len({s.shapes for s in ranked}) == len(ranked)                           # distinct
        assert all(s.blocks_ms <= budget + 1e-7 for s in ranked)


def test_solver_finds_nothing_below_the_fastest_subnet():
    scores, block_ms = random_problem(4, 0)
    assert solve(scores, block_ms, 0.9 * min(block_ms.values())) == []
    assert solve(scores, block_ms, 0.9 * min(block_ms.values()), top_k=2) == []
    assert block_budget_ms(10.0, 4.0) == 6.0 and block_budget_ms(10.0, 4.0, 2.0, 0.5) == 4.0


@pytest.fixture(scope="module")
def scored(world):  # noqa: F811
    loaded, strategy, _, data = world
    calibration = text_calibration(loaded.tokenizer, read_text(data / "wikitext2" / "valid.txt"), 2, 24, seed=3)
    return loaded, strategy, calibration


def test_block_scores_mean_what_they_say_and_resume(scored, tmp_path, monkeypatch):
    loaded, strategy, calibration = scored
    dims = ModelDims.from_config(loaded.model.config)
    result = score_blocks(loaded, strategy, calibration, [24, 48], tmp_path / "log.jsonl", heads=[3, 6],
                          progress=False)
    assert len(result.rows) == dims.num_layers * 7           # removed, 2 MLP-only, 2 x 2 heads x MLP
    assert (0, 24) in result.variants and all(m > 0 for _, m in result.variants[1:])
    table = result.table("loss_delta", dims.num_layers)
    ids = calibration.input_ids
    with torch.no_grad():
        def loss(model):
            hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, dims.hidden_size)
            return -token_logprobs(model, hidden, ids[:, 1:].reshape(-1)).double().mean().item()

        assert result.base_loss == pytest.approx(loss(loaded.model), abs=1e-5)
        shapes = [(6, 48)] * dims.num_layers
        for layer, variant in ((1, REMOVED), (2, (3, 24)), (3, (0, 48))):
            one = list(shapes)
            one[layer] = variant
            with subnet_view(loaded.model, heterogeneous_subnet(loaded.model, strategy.width, one)) as view:
                assert table[layer][variant] == pytest.approx(loss(view) - result.base_loss, abs=1e-5)
    assert all(r["kl"] >= -1e-7 for r in result.rows) and table[0][(6, 48)] == 0.0
    # A rerun reads every variant from the log: nothing is evaluated again, the scores are identical.
    monkeypatch.setattr(blocks_module, "subnet_view", lambda *a: pytest.fail("re-evaluated a logged variant"))
    again = score_blocks(loaded, strategy, calibration, [24, 48], tmp_path / "log.jsonl", heads=[3, 6],
                         progress=False)
    assert again.rows == result.rows
    with pytest.raises(UserError, match="other settings"):
        score_blocks(loaded, strategy, calibration, [48], tmp_path / "log.jsonl", compensate=False, progress=False)


def test_scores_around_a_subnet_are_exact_one_layer_changes_of_it(scored):
    loaded, strategy, calibration = scored
    dims = ModelDims.from_config(loaded.model.config)
    ids = calibration.input_ids

    def loss(shapes) -> float:
        subnet = heterogeneous_subnet(loaded.model, strategy.width, shapes)
        with torch.no_grad(), subnet_view(loaded.model, subnet) as view:
            hidden = view.base_model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, dims.hidden_size)
            return -token_logprobs(view, hidden, ids[:, 1:].reshape(-1)).double().mean().item()

    anchor = [(6, 48), REMOVED, (0, 24), (3, 48), (6, 24)][:dims.num_layers]
    variants = [REMOVED, (0, 48), (3, 24), (6, 48)]
    table = blocks_module.scores_around(loaded, strategy.width, calibration, anchor, [variants] * len(anchor),
                                        "loss_delta", progress=False)
    assert [layer[tuple(shape)] for layer, shape in zip(table, anchor)] == [0.0] * dims.num_layers
    base = loss(anchor)
    # re-adding a removed layer, removing the last one, a narrower and a wider variant
    for layer, variant in ((1, (6, 48)), (dims.num_layers - 1, REMOVED), (0, (3, 24)), (3, (6, 48))):
        changed = list(anchor)
        changed[layer] = variant
        assert table[layer][variant] == pytest.approx(loss(changed) - base, abs=1e-5)


def test_neighbours_are_the_near_variants_of_a_shape():
    offered = [REMOVED] + [(h, m) for h in (0, 3, 6, 9) for m in (100, 200, 300, 400)]
    near = blocks_module.neighbours((6, 200), offered, mlp_steps=1)
    assert sorted(near) == sorted([REMOVED, (6, 100), (6, 300), (3, 200), (9, 200)])
    assert sorted(blocks_module.neighbours((0, 400), offered)) == sorted([REMOVED, (0, 200), (0, 300), (3, 400)])
    back = blocks_module.neighbours(REMOVED, offered)
    assert sorted(back) == sorted((h, m) for h in (0, 9) for m in (100, 200, 300, 400))


def test_solver_trust_region_is_the_best_of_at_most_k_changes():
    import itertools

    scores, block_ms = random_problem(6, 1)
    anchor = [(6, 48)] * 6
    budget = 5 * block_ms[(6, 48)]                     # the anchor itself does not fit: something must change
    options = [REMOVED, *block_ms]
    for limit in (1, 2):
        best = None
        for layers in itertools.combinations(range(6), limit):          # every way to change <= limit layers
            for picked in itertools.product(options, repeat=limit):
                shapes = list(anchor)
                for layer, shape in zip(layers, picked):
                    shapes[layer] = shape
                if sum(block_ms.get(v, 0.0) for v in shapes) <= budget + 1e-9:
                    score = sum(layer[v] for layer, v in zip(scores, shapes))
                    best = score if best is None else min(best, score)
        found = solve(scores, block_ms, budget, top_k=2, anchor=anchor, max_changes=limit)
        assert all(sum(a != b for a, b in zip(s.shapes, anchor)) <= limit for s in found)
        assert (best is None and not found) or found[0].score == pytest.approx(best, abs=1e-9)


def test_a_heterogeneous_subnet_runs_in_llama_cpp_like_the_view(scored, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from amoeba_search.gguf_export import write_gguf

    loaded, strategy, _ = scored
    subnet = heterogeneous_subnet(loaded.model, strategy.width, [(6, 48), (3, 24), REMOVED, (0, 48), (6, 24)])
    ids = [5, 17, 99, 3, 42, 7]
    with torch.no_grad(), subnet_view(loaded.model, subnet) as view:
        expected = view(torch.tensor([ids])).logits[0]
    path = write_gguf(extract_model(loaded.model, subnet), tmp_path / "h.gguf", None, "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    assert (torch.tensor(llm.scores[:len(ids)]) - expected).abs().max().item() <= 1e-3


def test_search_heterogeneous_cli(world, scored, tmp_path):  # noqa: F811
    loaded, strategy, root, data = world
    _, _, calibration = scored
    base = [sys.executable, "-m", "amoeba_search.cli", "search", "--space", "heterogeneous", "--model",
            str(loaded.path), "--device", "toy", "--flow", "roofline", "--profiles-dir", str(root / "profiles"),
            "--data-dir", str(data), "--proxy-samples", "2", "--storage", f"sqlite:///{tmp_path}/h.db",
            "--out", str(tmp_path / "best.json")]
    refused = subprocess.run(base + ["--strategy", str(root / "strategy.json"), "--target-ratio", "0.6"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "amoeba blocks" in refused.stderr and "Traceback" not in refused.stderr
    strategy.blocks = score_blocks(loaded, strategy, calibration, [24, 48], heads=[3, 6], progress=False)
    strategy.save(tmp_path / "mlp-only.json")                # the toy profile has no MLP-only rows
    unprofiled = subprocess.run(base + ["--strategy", str(tmp_path / "mlp-only.json"), "--target-ratio", "0.6"],
                                capture_output=True, text=True)
    assert unprofiled.returncode == 2 and "--mlp-only-layers" in unprofiled.stderr
    strategy.blocks = score_blocks(loaded, strategy, calibration, [24, 48], heads=[3, 6], mlp_only=False,
                                   progress=False)
    strategy.save(tmp_path / "with-blocks.json")
    strategy.blocks = None
    run = subprocess.run(base + ["--strategy", str(tmp_path / "with-blocks.json"), "--target-ratio", "0.6",
                                 "--top-k", "3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    import json

    best = json.loads((tmp_path / "best.json").read_text())
    assert best["search"]["predicted_ms"] <= best["search"]["target_ms"] + 1e-9
    origins = [c["origin"] for c in best["search"]["candidates"]]
    assert origins.count("exact") == 3 and any(o.startswith("uniform") for o in origins)
    best_value = min(c["proxy_value"] for c in best["search"]["candidates"])
    assert best["search"]["proxy_value"] == best_value
    too_low = subprocess.run(base + ["--strategy", str(tmp_path / "with-blocks.json"), "--target-ms", "0.001"],
                             capture_output=True, text=True)
    assert too_low.returncode == 2 and "below the fastest" in too_low.stderr
    # Refining re-draws the block scores' calibration windows from their recorded text file.
    refine = base + ["--strategy", str(tmp_path / "with-blocks.json"), "--target-ratio", "0.6", "--top-k", "3",
                     "--refine-rounds", "2", "--max-changes", "2"]
    unnamed = subprocess.run(refine, capture_output=True, text=True)          # the fixture's windows are "text"
    assert unnamed.returncode == 2 and "calibration text" in unnamed.stderr and "Traceback" not in unnamed.stderr
    payload = json.loads((tmp_path / "with-blocks.json").read_text())
    payload["blocks"]["calibration"]["data"] = str(data / "wikitext2" / "valid.txt")   # where they were drawn from
    (tmp_path / "with-blocks.json").write_text(json.dumps(payload))
    run = subprocess.run(refine, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    refined = json.loads((tmp_path / "best.json").read_text())["search"]
    pool = [c["proxy_value"] for c in refined["candidates"] if not c["origin"].startswith("refined")]
    assert refined["proxy_value"] <= min(pool) and refined["refine_rounds"] == 2
    assert refined["predicted_ms"] <= refined["target_ms"] + 1e-9
    for c in refined["candidates"]:
        if c["origin"].startswith("refined"):
            assert c["predicted_ms"] <= refined["target_ms"] + 1e-9


@pytest.mark.parametrize("args, message", [(["--mlp-ratios", "0.5,2"], "--mlp-ratios"),
                                           (["--samples", "0"], "--samples"),
                                           (["--heads", "3,x"], "--heads")])
def test_blocks_cli_refuses_bad_options_in_one_line(args, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "amoeba_search.cli", "blocks", "--out", str(tmp_path / "s.json"),
                          *args], capture_output=True, text=True)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "s.json").exists()


def test_mlp_only_and_attention_only_layers_view_extract_and_generate(scored, tmp_path):
    """Skipped sub-blocks add nothing; the cache still counts positions when the first layer has no attention
    (cached generation = uncached argmax); GGUF refuses what llama.cpp cannot run exactly."""
    from amoeba_search.gguf_export import write_gguf
    from amoeba_search.models import load_model
    from amoeba_search.extract import extract

    loaded, strategy, _ = scored
    subnet = heterogeneous_subnet(loaded.model, strategy.width, [(0, 48), (6, 24), (3, 0), REMOVED, (6, 48)])
    assert subnet.heads[0] == () and subnet.mlp_channels[2] == ()
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad(), subnet_view(loaded.model, subnet) as view:
        expected = view(ids).logits
        cached = view.generate(ids, max_new_tokens=5, do_sample=False)
    uncached = ids
    extract(loaded, subnet, tmp_path / "ckpt")
    reloaded = load_model(str(tmp_path / "ckpt")).model
    with torch.no_grad():
        assert (reloaded(ids).logits - expected).abs().max().item() <= 1e-4
        for _ in range(5):
            uncached = torch.cat([uncached, reloaded(uncached).logits[:, -1:].argmax(-1)], 1)
        assert torch.equal(reloaded.generate(ids, max_new_tokens=5, do_sample=False), uncached)
    assert torch.equal(cached, uncached)
    with pytest.raises(UserError, match="first layer"):
        write_gguf(reloaded, tmp_path / "a.gguf", None, "f32")
    attention_only = heterogeneous_subnet(loaded.model, strategy.width, [(6, 48), (3, 0), (6, 48), REMOVED, (6, 48)])
    with pytest.raises(UserError, match="attention-only"):
        write_gguf(extract_model(loaded.model, attention_only), tmp_path / "b.gguf", None, "f32")
    assert not list(tmp_path.glob("*.gguf"))


def test_the_fit_counts_the_lead_block_of_mlp_only_rows():
    import pandas as pd

    from amoeba_search.profiling.lut import fit_lut

    truth = {(3, 24): 1.0, (6, 48): 1.5, (0, 24): 0.5}
    rows = [{"layers": 0, "heads": 0, "mlp": 0, "median_ms": 2.0}] + [
        {"layers": 2, "heads": h, "mlp": m, "median_ms": 2.0 + 2 * ms + (truth[(6, 48)] if h == 0 else 0.0)}
        for (h, m), ms in truth.items()]
    frame = pd.DataFrame([{"phase": "decode", "tokens": 8, "batch": 1, "dtype": "float32", **r} for r in rows])
    table = fit_lut(frame).set_index(["component", "heads", "mlp"])["latency_ms"]
    assert table[("base", 0, 0)] == pytest.approx(2.0)
    for (h, m), ms in truth.items():
        assert table[("block", h, m)] == pytest.approx(ms)


def test_an_mlp_only_profile_row_times_a_model_led_by_a_full_block(scored):
    from amoeba_search.profiling.profile import block_model

    loaded, _, _ = scored
    model = block_model(loaded.model, 2, 0, 24, lead=(6, 48))
    assert model.config.num_hidden_layers == 3
    assert [s["heads"] for s in model.config.amoeba_layer_shapes] == [6, 0, 0]


@pytest.mark.parametrize("flow_name", ["torch-eager", "torch-compile", "onnxruntime", "llama.cpp"])
def test_every_cpu_flow_times_a_heterogeneous_model(scored, flow_name):
    """The PyTorch builder's per-layer model (MLP-only layer included) is what each flow prepares and runs."""
    from amoeba_search.profiling.flows import FLOWS
    from amoeba_search.profiling.lut import Setting

    flow = FLOWS.get(flow_name)
    if flow.unavailable():
        pytest.skip(flow.unavailable())
    loaded, strategy, _ = scored
    subnet = heterogeneous_subnet(loaded.model, strategy.width, [(6, 48), (0, 24), (3, 24), REMOVED, (6, 48)])
    model = extract_model(loaded.model, subnet)
    dtype = "q8_0" if flow_name == "llama.cpp" else "float32"
    for phase in ("prefill", "decode"):
        prepared = flow.prepare(model, Setting(phase, 8, 1, dtype))
        for _ in range(2):
            prepared.run()
            if prepared.reset:
                prepared.reset()


def test_pareto_rows_hold_both_spaces(world, scored):  # noqa: F811
    from amoeba_search.search.report import pareto_rows
    from amoeba_search.plot import HETERO_SERIES
    from amoeba_search.search.study import pareto

    loaded, strategy, root, _ = world
    ctx = context(world)
    ctx.strategy.blocks = score_blocks(loaded, strategy, scored[2], [24, 48], heads=[3, 6], mlp_only=False,
                                       progress=False)
    try:
        rows = pareto_rows(ctx, pareto(ctx, 4, "nsga2", 0), baselines=False, heterogeneous=(0.05, 0.5, 0.9))
    finally:
        ctx.strategy.blocks = None
    hetero = [r for r in rows if r["series"] == HETERO_SERIES]
    assert len(hetero) == 2                                    # 5% is below the fastest subnet: no point
    assert all(r["latency_ms"] <= ratio * ctx.full_model_ms() + 1e-9 for r, ratio in zip(hetero, (0.5, 0.9)))


def test_finetuning_can_draw_the_solvers_shapes(world, scored, tmp_path):  # noqa: F811
    """--heterogeneous-shapes solver: the pool is exactly the brute-force optimum at each latency ratio of each
    profile's full model, and the sandwich's heterogeneous subnets come from it; without block scores, one line."""
    import dataclasses

    from amoeba_search.finetune.recipe import SOLVER_RATIOS, TrainConfig, Trainer
    from amoeba_search.finetune.smol import AdapterConfig
    from amoeba_search.profiling.lut import LookupTable
    from amoeba_search.search.heterogeneous import solver_shapes, solver_table

    loaded, strategy, root, data = world
    _, _, calibration = scored
    blocks = score_blocks(loaded, strategy, calibration, [24, 48], heads=[3, 6], mlp_only=False, progress=False)
    dims = ModelDims.from_config(loaded.model.config)
    full = (dims.num_heads, dims.intermediate_size)
    luts = [LookupTable.load(root / "profiles" / name / "roofline") for name in ("toy", "toy2")]
    pool = solver_shapes(blocks, dims.num_layers, full, luts, SOLVER_RATIOS)
    table = solver_table(blocks.table("kl", dims.num_layers))
    expected = set()
    for lut in luts:
        (setting,) = lut.settings()
        block_ms = {v: lut.block_ms(setting, *v) for v in lut.widths(setting)}
        base = lut.base_ms(setting)
        for ratio in SOLVER_RATIOS:
            budget = block_budget_ms(ratio * (base + dims.num_layers * block_ms[full]), base)
            expected.add(brute_force(table, block_ms, budget).shapes)
    assert set(pool) == expected and len(pool) == len(expected) > 1
    assert all(shapes[0][0] > 0 for shapes in pool)                        # the first layer keeps attention
    texts = {"valid.txt": [read_text(data / "wikitext2" / "valid.txt")]}
    config = TrainConfig(steps=1, batch_size=2, seq_len=32, checkpoint_every=1, subnets_per_step=4,
                         heterogeneous_per_step=2, heterogeneous_shapes="solver")
    plain = AdapterConfig(experts=1, top_k=1, rank=2)
    run = Trainer(loaded, dataclasses.replace(strategy, blocks=blocks), root / "strategy.json", texts,
                  tmp_path / "run", config, plain, progress=False, shape_profiles=luts)
    assert set(run.solver_pool) == expected and run.record["solver_shapes"]["distinct"] == len(expected)
    drawn = {shapes for step in range(8) for shapes in run.sandwich(step)[2:]}
    assert drawn <= expected and len(drawn) > 1
    with pytest.raises(UserError, match="block scores"):
        Trainer(loaded, strategy, root / "strategy.json", texts, tmp_path / "b", config, plain, progress=False,
                shape_profiles=luts)
    with pytest.raises(UserError, match="--heterogeneous-shapes"):
        TrainConfig(heterogeneous_per_step=2, heterogeneous_shapes="uniform")


def test_adapters_trained_on_uniform_shapes_only_are_flagged_before_a_per_layer_search():
    from types import SimpleNamespace

    from amoeba_search.search.heterogeneous import adapters_warning

    assert adapters_warning(SimpleNamespace(adapters=None)) is None
    assert adapters_warning(SimpleNamespace(adapters=SimpleNamespace(saw_heterogeneous=True))) is None
    assert "uniform shapes only" in adapters_warning(SimpleNamespace(adapters=SimpleNamespace(saw_heterogeneous=False)))
