"""`amoeba demo` end to end on the tiny model: its own quick profile covers every block shape the strategy's scores
offer, the per-layer search meets the target, and the checkpoint it hands over computes what the scored in-place
subnet computes."""

from __future__ import annotations

import json

import torch
from rich.console import Console

from amoeba_search import demo
from amoeba_search.data import read_text
from amoeba_search.models import load_model
from amoeba_search.profiling.profile import DEFAULT_MLP_RATIOS
from amoeba_search.selection.blocks import score_blocks
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.strategy import Strategy
from amoeba_search.subnet import ModelDims, Subnet

from .test_search import world  # noqa: F401  (the module-scoped tiny strategy + estimated profiles)


def test_demo_hands_over_the_per_layer_subnet_it_scored(world, tmp_path, monkeypatch):  # noqa: F811
    loaded, _, root, data = world
    dims = ModelDims.from_config(loaded.model.config)
    strategy = Strategy.load(root / "strategy.json")
    calibration = text_calibration(loaded.tokenizer, read_text(data / "wikitext2" / "valid.txt"), 2, 24, seed=3)
    widths = sorted({max(1, round(r * dims.intermediate_size)) for r in DEFAULT_MLP_RATIOS})
    strategy.blocks = score_blocks(loaded, strategy, calibration, widths, progress=False)
    strategy.save(tmp_path / "blocks.json")
    monkeypatch.setattr(demo, "default_device_slug", lambda: "tiny-test-cpu")     # no committed profile: measure
    console = Console(record=True, width=200)
    out = tmp_path / "out"
    record = demo.run_demo(console, loaded, out, target_ratio=0.7, trials=3, questions=2, windows=1, data_dir=data,
                           strategy_path=tmp_path / "blocks.json", proxy="ppl")
    best = json.loads((out / "best_subnet.json").read_text())
    assert record["space"] == best["search"]["space"] == "heterogeneous" and record["proxy"] == "ppl"
    assert best["search"]["predicted_ms"] <= record["target_ms"]
    full, handed = record["rows"]                              # no adapters: no "not fine-tuned" row
    assert full["name"] == "full model" and handed["measured_ms"] > 0 and handed["generation"]
    assert handed["layers"] == len(best["layers"]) and "arc_easy" in handed["tasks"]
    subnet = Subnet.from_dict(best, dims)
    ids = calibration.input_ids                                                    # (2, 24)
    with torch.no_grad(), loaded.view(subnet) as view:
        expected = view(input_ids=ids).logits
    handed_over = load_model(str(out / "best_checkpoint")).model
    with torch.no_grad():
        assert (handed_over(input_ids=ids).logits - expected).abs().max().item() <= 1e-4
    assert (out / "pareto.png").is_file() and (out / "demo.json").is_file()
    assert "profiling this machine" in console.export_text()
