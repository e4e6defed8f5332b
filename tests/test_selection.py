import itertools
import json
import random

import pytest

from amoeba_search.errors import UserError
from amoeba_search.data import read_text
from amoeba_search.selection.calibration import LayerRunner, text_calibration
from amoeba_search.selection.depth_dp import PrefixCachedLoss, dp_select
from amoeba_search.selection.select import DEPTH_SELECTORS, select_depth
from amoeba_search.selection.strategy import Strategy
from amoeba_search.subnet import Subnet
from amoeba_search.view import subnet_view


@pytest.mark.parametrize("protected", [frozenset(), frozenset({0, 9})])
def test_dp_equals_brute_force_on_additive_score(protected):
    rng = random.Random(1)
    cost = [rng.uniform(-1, 3) for _ in range(10)]
    table = dp_select(10, 6, lambda removed, boundary: sum(cost[i] for i in removed), protected, progress=False)
    removable = [i for i in range(10) if i not in protected]
    for m in range(7):
        best = min(sum(cost[i] for i in combo) for combo in itertools.combinations(removable, m))
        assert table.score[m] == pytest.approx(best, abs=1e-12)
        assert len(table.kept[m]) == 10 - m and protected <= set(table.kept[m])


@pytest.fixture()
def runner(tiny, tiny_data):
    calibration = text_calibration(tiny.tokenizer, read_text(tiny_data / "wikitext2/valid.txt"), samples=3,
                                   seq_len=48, name="tiny")
    return LayerRunner(tiny.model, calibration)


def _direct_loss(runner, kept):
    """Reference: the calibration loss of the in-place subnet through the ordinary forward pass."""
    from amoeba_search.evaluate import token_logprobs
    from amoeba_search.subnet import ModelDims
    ids = runner.calibration.input_ids
    with subnet_view(runner.model, Subnet.uniform(ModelDims.from_config(runner.model.config), kept)):
        hidden = runner.model.base_model(input_ids=ids).last_hidden_state
    return -token_logprobs(runner.model, hidden[:, :-1].reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)).mean().item()


def test_prefix_reuse_gives_the_same_loss_with_fewer_layer_runs(runner, monkeypatch):
    calls = []
    original = runner.run
    monkeypatch.setattr(runner, "run", lambda h, layers: calls.append(len(layers)) or original(h, layers))
    table = dp_select(5, 3, PrefixCachedLoss(runner), progress=False)
    for m, kept in table.kept.items():
        assert table.score[m] == pytest.approx(_direct_loss(runner, kept), abs=1e-4)
    # Prefixes are extended one layer at a time and reused: far fewer than one prefix per evaluation.
    assert sum(calls) <= 5 * 4 and table.evaluations == 1 + 1 + 2 + 3 + 3 + 3


def test_dp_is_close_to_brute_force_on_tiny_model(runner):
    """The real loss is not additive: the DP is a heuristic, but must never beat the optimum and rarely miss it."""
    table = dp_select(5, 3, PrefixCachedLoss(runner), progress=False)
    for m in range(4):
        best = min(_direct_loss(runner, [i for i in range(5) if i not in combo])
                   for combo in itertools.combinations(range(5), m))
        assert table.score[m] >= best - 1e-4


def test_interrupted_dp_resumes_from_cache(tiny, runner, tmp_path):
    cache = tmp_path / "dp.cache.jsonl"
    first = select_depth(tiny, runner.calibration, "dp", max_removed=3, cache_path=cache, progress=False)
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # cut mid-line, as a kill would
    resumed = select_depth(tiny, runner.calibration, "dp", max_removed=3, cache_path=cache, progress=False)
    assert resumed.depth.rows == first.depth.rows
    other = text_calibration(tiny.tokenizer, "abc " * 400, samples=2, seq_len=40, name="other")
    with pytest.raises(UserError, match="other settings"):
        select_depth(tiny, other, "dp", max_removed=3, cache_path=cache, progress=False)


@pytest.mark.parametrize("method", DEPTH_SELECTORS.names())
def test_every_selector_gives_a_valid_table(tiny, runner, method):
    strategy = select_depth(tiny, runner.calibration, method, max_removed=3, keep_last=1, progress=False)
    rows = strategy.depth.rows
    assert [r.num_layers for r in rows] == [5, 4, 3, 2]
    for row in rows:
        assert len(row.layers) == row.num_layers and list(row.layers) == sorted(set(row.layers))
        if method != "drop_last":
            assert 4 in row.layers  # keep_last=1 protects the last layer
    if method == "drop_last":
        assert list(rows[-1].layers) == [0, 1]


def test_strategy_file_round_trip_and_errors(tiny, runner, tmp_path):
    strategy = select_depth(tiny, runner.calibration, "shortgpt", max_removed=2, progress=False)
    loaded = Strategy.load(strategy.save(tmp_path / "s.json"))
    assert loaded.layers_for(3) == list(strategy.depth.rows[2].layers)
    with pytest.raises(UserError, match="depths 3..5"):
        loaded.layers_for(2)
    with pytest.raises(UserError, match="computed for model"):
        loaded.check_model({"name": "other", "config_sha256": "0"})
    with pytest.raises(UserError, match="--max-removed must be in 0..4"):
        select_depth(tiny, runner.calibration, "dp", max_removed=5, progress=False)
    assert json.loads((tmp_path / "s.json").read_text())["kind"] == "amoeba_search.strategy"


def test_mmlu_calibration_objective_matches_evaluation(tiny, tiny_data):
    from amoeba_search.data import read_mmlu
    from amoeba_search.evaluate import multiple_choice
    from amoeba_search.selection.calibration import multiple_choice_calibration

    items = read_mmlu(tiny_data / "mmlu/zero_shot_val.jsonl")
    calibration = multiple_choice_calibration(tiny.tokenizer, items, samples=4)
    runner = LayerRunner(tiny.model, calibration)
    reference = multiple_choice(tiny.model, tiny.tokenizer, items, progress=False)
    gold_nll = -sum(ll[i.gold] for ll, i in zip(reference["loglikelihoods"], items)) / 4
    assert runner.loss(runner.embed(), list(range(5))) == pytest.approx(-reference["acc"] / 100 + 1e-3 * gold_nll,
                                                                         abs=1e-6)
    table = dp_select(5, 2, PrefixCachedLoss(runner), progress=False)
    assert sorted(table.kept) == [0, 1, 2]
