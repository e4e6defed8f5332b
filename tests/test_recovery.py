"""Recovery pieces: the self-generated distillation corpus (exact resume, refusal of other settings, training
reader), shipped-adapter export (bf16, same merged model within bf16 rounding), and the honest-quality helpers
(lm-eval's standard error, chance warnings, greedy answers of the view == of the extracted checkpoint)."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch

from amoeba_search.data import read_training_texts
from amoeba_search.errors import UserError
from amoeba_search.evaluate import mean_stderr_pct, near_chance, paired_difference_pct, retained_ratio
from amoeba_search.extract import extract
from amoeba_search.finetune.checkpoint import export_adapters, load_adapters, save_checkpoint
from amoeba_search.finetune.corpus import CorpusSettings, generate_corpus
from amoeba_search.finetune.smol import AdapterConfig, SMoLAdapters
from amoeba_search.models import load_model
from amoeba_search.profiling.lut import Setting
from amoeba_search.quality import chance_warnings, greedy_samples, quality, quality_table
from amoeba_search.selection.space import Candidate, SearchSpace, candidate_subnet
from amoeba_search.subnet import ModelDims
from tests.test_finetune import world  # noqa: F401  (the shared tiny model + strategy fixture)

SETTINGS = CorpusSettings(samples=6, max_new_tokens=8, batch_size=2, temperature=1.0, top_k=20)


@pytest.fixture()
def instructions(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {w}.", "instances": [{"input": "", "output": w}]}) + "\n"
                            for w in ("hello", "bye", "yes")))
    return path


def test_corpus_resumes_exactly_and_refuses_other_settings(tiny, instructions, tmp_path):
    straight = generate_corpus(tiny, instructions, tmp_path / "straight.jsonl", SETTINGS, progress=False)
    lines = straight.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + SETTINGS.samples and json.loads(lines[0])["settings"]["samples"] == SETTINGS.samples
    torn = tmp_path / "torn.jsonl"                       # killed mid-write: two batches and half a line
    torn.write_text("".join(lines[:5]) + lines[5][:10])
    generate_corpus(tiny, instructions, torn, SETTINGS, progress=False)
    body = lambda p: [{k: v for k, v in json.loads(x).items()} for x in p.read_text().splitlines()[1:]]  # noqa: E731
    assert body(torn) == body(straight)
    with pytest.raises(UserError, match="different settings"):
        generate_corpus(tiny, instructions, torn, CorpusSettings(samples=6, max_new_tokens=9, batch_size=2),
                        progress=False)
    not_a_corpus = tmp_path / "other.jsonl"
    not_a_corpus.write_text('{"text": "x"}\n')
    with pytest.raises(UserError, match="not a distillation corpus"):
        generate_corpus(tiny, instructions, not_a_corpus, SETTINGS, progress=False)
    texts = read_training_texts(straight)                # the header is skipped, every sample is a text
    assert len(texts) == SETTINGS.samples and all(t.startswith(("Say ", *__import__(
        "amoeba_search.finetune.corpus", fromlist=["OPENINGS"]).OPENINGS)) for t in texts)


def test_the_self_ppl_held_out_seed_is_never_training_text(tmp_path):
    """A corpus written with the seed the self_ppl proxy keeps for its held-out text holds that proxy's prompts (and
    with its settings, its very text): `amoeba corpus` refuses the seed, `amoeba finetune` refuses such a file."""
    from amoeba_search.finetune.corpus import CORPUS_KIND, HELD_OUT_SEED, corpus_seed
    from tests.test_cli import amoeba

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"kind": CORPUS_KIND, "settings": {"seed": HELD_OUT_SEED}}) + "\n"
                        + json.dumps({"index": 0, "prompt": "Say", "text": "Say hello."}) + "\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("some text")
    assert corpus_seed(held_out) == HELD_OUT_SEED and corpus_seed(plain) is None
    result = amoeba("corpus", "--seed", str(HELD_OUT_SEED), "--out", tmp_path / "c.jsonl")
    assert result.returncode == 2 and "held-out" in result.stderr and not (tmp_path / "c.jsonl").exists()
    for option in ("--data", "--corpus"):
        result = amoeba("finetune", option, held_out, "--out", tmp_path / "run")
        assert result.returncode == 2 and f"{held_out} was written with seed" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_stderr_is_lm_evals_and_chance_is_flagged():
    outcomes = [True] * 50 + [False] * 50
    assert mean_stderr_pct(outcomes) == pytest.approx(100 * math.sqrt(0.25 / 99))
    result = {"acc": 27.0, "acc_stderr": 2.0, "acc_norm": 40.0, "acc_norm_stderr": 2.0, "chance_acc": 25.0}
    assert near_chance(result) and not near_chance(result, "acc_norm")
    (line,) = chance_warnings({"arc_easy": result})
    assert "arc_easy acc 27.0" in line and "chance (25.0)" in line


def test_paired_difference_counts_only_the_questions_that_changed():
    reference = [True] * 50 + [False] * 50
    other = [False] * 5 + [True] * 45 + [True] * 2 + [False] * 48      # 5 lost, 2 gained: -3 points
    diff, stderr = paired_difference_pct(reference, other)
    diffs = [-1] * 5 + [1] * 2 + [0] * 93
    assert diff == pytest.approx(-3.0)
    assert stderr == pytest.approx(100 * statistics.stdev(diffs) / math.sqrt(100))
    assert stderr < math.sqrt(2) * mean_stderr_pct(reference)          # far below two independent scores' noise
    with pytest.raises(ValueError):
        paired_difference_pct(reference, other[:-1])


def test_retained_ratio_and_its_error_match_resampling():
    """The delta-method error equals the spread of the ratio over fresh question sets drawn from the same joint
    distribution of (full right?, subnet right?), and is the plain ratio of above-chance accuracies."""
    full = [True] * 300 + [False] * 270
    subnet = [True] * 250 + [False] * 50 + [True] * 20 + [False] * 250
    ratio, stderr = retained_ratio(full, subnet, 25.0)
    assert ratio == pytest.approx((100 * 270 / 570 - 25) / (100 * 300 / 570 - 25))
    assert retained_ratio(full, full, 25.0) == (pytest.approx(1.0), pytest.approx(0.0))
    rng = random.Random(0)
    pairs = list(zip(full, subnet))
    draws = [retained_ratio(*zip(*(rng.choice(pairs) for _ in pairs)), 25.0)[0] for _ in range(400)]
    assert statistics.stdev(draws) == pytest.approx(stderr, rel=0.15)
    with pytest.raises(ValueError, match="chance"):
        retained_ratio([False] * 10, [True] * 10, 25.0)


def test_handover_rows_are_compared_on_the_same_questions():
    from amoeba_search.quality import paired_lines

    full = {"name": "full", "tasks": {"arc_easy": {"outcomes": "1" * 60 + "0" * 40}, "wikitext2": {"ppl": 20.0}}}
    tuned = {"name": "tuned", "tasks": {"arc_easy": {"outcomes": "1" * 40 + "0" * 60}}}
    plain = {"name": "plain", "tasks": {"arc_easy": {"outcomes": "1" * 39 + "0" * 61}}}
    lines = paired_lines([full, tuned, plain])
    assert len(lines) == 3 and "tuned vs full: arc_easy acc -20.0 ± 4.0 points (beyond 2" in lines[0]
    assert lines[2].startswith("plain vs tuned: arc_easy acc -1.0 ± 1.0 points (within noise)")
    assert paired_lines([full, full])[0].endswith("(the same answers)")
    other = {"name": "other", "tasks": {"arc_easy": {"outcomes": "1" * 50}}}       # other questions: no pairing
    assert paired_lines([full, other]) == []


def test_scores_on_the_adapters_training_data_are_flagged():
    from types import SimpleNamespace

    from amoeba_search.quality import held_in_warnings
    from amoeba_search.tasks import TASKS

    tasks = [TASKS.get(name) for name in ("mmlu", "arc_easy")]
    adapters = SimpleNamespace(record={"data": {"files": ["/elsewhere/data/mmlu/zero_shot_val.jsonl", "c.jsonl"]}})
    (line,) = held_in_warnings(SimpleNamespace(adapters=adapters), tasks)
    assert line.startswith("mmlu:") and "not held out" in line
    assert held_in_warnings(SimpleNamespace(adapters=None), tasks) == []


def test_view_answers_equal_the_extracted_checkpoints(world, tmp_path):  # noqa: F811
    """The greedy sample shown for a subnet is the one its extracted checkpoint gives (KV cache and all)."""
    loaded, strategy, _, _ = world
    subnet = candidate_subnet(loaded.model, strategy, Candidate(3, 4, 24))
    with loaded.view(subnet) as model:
        in_place = greedy_samples(model, loaded.tokenizer, max_new_tokens=12)
    extracted = load_model(str(extract(loaded, subnet, tmp_path / "ckpt")))
    assert greedy_samples(extracted.model, extracted.tokenizer, max_new_tokens=12) == in_place


def test_quality_record_names_what_it_scored(world, tiny_data):  # noqa: F811
    loaded = world[0]
    record = quality(loaded, None, tiny_data, questions=4, windows=1)
    arc = record["tasks"]["arc_easy"]
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance_acc"} <= set(arc)
    assert len(record["generation"]) == 3 and all(isinstance(s["text"], str) for s in record["generation"])
    assert isinstance(record["warnings"], list)
    row = {"name": "full", "predicted_ms": 20.0, "measured_ms": 25.0, "measured_p10_ms": 24.0,
           "measured_p90_ms": 27.0, "tasks": record["tasks"]}
    view_row = {**row, "name": "view", "measured_ms": None, "measured_p10_ms": None}
    table = quality_table([row, view_row], "t", Setting("decode", 128, 1, "float32"))
    headers = [c.header for c in table.columns]
    assert headers[1:4] == ["predicted TPOT ms", "measured TPOT ms (p10-p90)", "tg tok/s"]
    assert list(table.columns[3].cells) == ["40.0", "50.0 (predicted)"]      # measured where measured
    row["measured_estimator"] = "quiet"                                      # the caption says what "measured" is
    assert table.caption is None and "lowest p10 over the passes" in quality_table(
        [row], "t", Setting("decode", 128, 1, "float32")).caption
    assert Setting("prefill", 128, 2, "float32").tokens_per_s(100.0) == pytest.approx(2560.0)   # pp: 2 x 128 / 0.1 s


def test_exported_bf16_adapters_load_and_merge_like_the_checkpoint(world, tmp_path):  # noqa: F811
    loaded, strategy, root, _ = world
    dims = ModelDims.from_config(loaded.model.config)
    config = AdapterConfig(experts=3, top_k=2, rank=4)
    adapters = SMoLAdapters(dims, SearchSpace.from_strategy(strategy, dims), config, loaded.model)
    torch.manual_seed(0)
    for name, param in adapters.named_parameters():
        if name.endswith(".B"):
            param.data.normal_(0, 0.05)
    record = {"model": loaded.fingerprint, "strategy": {"path": str(root / "strategy.json"),
                                                        "fingerprint": strategy.fingerprint},
              "space": adapters.space.to_dict(), "adapter": config.to_dict(), "training": {}, "step": 1,
              "seconds": 0.0, "history": []}
    run = tmp_path / "run"
    save_checkpoint(run, adapters, torch.optim.AdamW(adapters.parameters()), record)
    shipped = export_adapters(run, tmp_path / "shipped")
    assert sorted(p.name for p in shipped.iterdir()) == ["adapters.json", "adapters.safetensors"]
    full, small = load_adapters(loaded, run), load_adapters(loaded, shipped)
    assert (shipped / "adapters.safetensors").stat().st_size < 0.6 * (run / "step-000001" /
                                                                      "adapters.safetensors").stat().st_size
    ids = torch.randint(0, 257, (1, 16))
    subnet = candidate_subnet(loaded.model, strategy, Candidate(4, 6, 48))
    with torch.no_grad():
        with full.applied(loaded.model, subnet) as model:
            a = model(input_ids=ids).logits
        with small.applied(loaded.model, subnet) as model:
            b = model(input_ids=ids).logits
    assert (a - b).abs().max().item() < 2e-2 * a.abs().max().item()
