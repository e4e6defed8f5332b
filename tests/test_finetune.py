"""Fine-tuning: the shape router, merge equivalence, one step reduces the loss, exact resume, loss balancing, data
readers and mismatch errors, and the CLI round trip (finetune -> evaluate -> extract --adapters)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from amoeba_search.data import read_text, read_training_texts
from amoeba_search.errors import UserError
from amoeba_search.extract import extract_model
from amoeba_search.finetune.checkpoint import checkpoints, load_adapters
from amoeba_search.finetune.recipe import TrainConfig, Trainer, balanced, distillation_loss
from amoeba_search.finetune.smol import AdapterConfig, SMoLAdapters
from amoeba_search.models import load_model
from amoeba_search.selection.space import Candidate, SearchSpace, candidate_subnet
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.select import select_depth
from amoeba_search.subnet import ModelDims, Subnet
from tests.test_cli import amoeba

ADAPTER = AdapterConfig(experts=3, top_k=2, rank=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir, tiny_data):
    root = tmp_path_factory.mktemp("finetune")
    loaded = load_model(str(tiny_dir))
    text = read_text(tiny_data / "wikitext2" / "valid.txt")
    strategy = select_depth(loaded, text_calibration(loaded.tokenizer, text, 4, 32), "dp", max_removed=3,
                            progress=False)
    strategy.save(root / "strategy.json")
    return loaded, strategy, root, {"valid.txt": [text]}


def trainer(world, out, steps=2, **overrides) -> Trainer:
    loaded, strategy, root, data = world
    config = TrainConfig(**{"steps": steps, "batch_size": 2, "seq_len": 32, "lr": 1e-2, "checkpoint_every": 2,
                            **overrides})
    return Trainer(loaded, strategy, root / "strategy.json", data, out, config, ADAPTER, progress=False)


def test_router_gate_is_top_k_sparse_and_depends_on_shape(world):
    loaded, strategy, _, _ = world
    dims = ModelDims.from_config(loaded.model.config)
    adapters = SMoLAdapters(dims, SearchSpace.from_strategy(strategy, dims), ADAPTER, loaded.model).eval()
    gates = [adapters.gate(candidate_subnet(loaded.model, strategy, c))
             for c in (Candidate(5, 6, 48), Candidate(2, 2, 12), Candidate(3, 6, 24))]
    for gate in gates:
        assert gate.shape == (ADAPTER.experts,)
        assert int((gate > 0).sum()) == ADAPTER.top_k
        assert gate.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(gates[0], gates[1]) and not torch.allclose(gates[0], gates[2])
    adapters.train()   # learned noise while training: the same shape can route differently
    noisy = [adapters.gate(candidate_subnet(loaded.model, strategy, Candidate(5, 6, 48)),
                           torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.allclose(noisy[0], g) for g in noisy[1:])


def test_shape_outside_the_trained_space_is_refused(world):
    loaded, strategy, _, _ = world
    dims = ModelDims.from_config(loaded.model.config)
    adapters = SMoLAdapters(dims, SearchSpace.from_strategy(strategy, dims), ADAPTER, loaded.model)
    with pytest.raises(UserError, match="MLP widths"):
        adapters.gate(candidate_subnet(loaded.model, strategy, Candidate(5, 6, 7)))


def test_merged_extracted_subnet_matches_adapted_view(world):
    """Merge sum_e g_e B_e A_e into the dense weights, extract: logits equal the adapted in-place subnet."""
    loaded, strategy, _, _ = world
    dims = ModelDims.from_config(loaded.model.config)
    adapters = SMoLAdapters(dims, SearchSpace.from_strategy(strategy, dims), ADAPTER, loaded.model).eval()
    torch.manual_seed(3)
    for name, param in adapters.named_parameters():
        if name.endswith(".B"):
            param.data.normal_(0, 0.05)      # trained-looking adapters (B starts at zero)
    ids = torch.randint(0, 257, (2, 24))
    for candidate in (Candidate(3, 4, 24), Candidate(5, 6, 48), Candidate(2, 3, 12)):
        subnet = candidate_subnet(loaded.model, strategy, candidate)
        with torch.no_grad(), adapters.applied(loaded.model, subnet) as model:
            adapted = model(input_ids=ids).logits
        with torch.no_grad():
            plain = loaded.model(input_ids=ids).logits if candidate.depth == 5 else None
        merged = load_model(str(loaded.path)).model
        adapters.merge_into(merged, subnet)
        with torch.no_grad():
            extracted = extract_model(merged, subnet)(input_ids=ids).logits
        assert (adapted - extracted).abs().max().item() <= 1e-4
        if plain is not None:                # the adapters really change the output
            assert (adapted - plain).abs().max().item() > 1e-3


def sandwich_losses(run: Trainer, step: int) -> list[float]:
    """The step's K losses without training (router noise off), as train_step computes them."""
    loaded, ids = run.loaded, run.batch(step)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    run.adapters.eval()
    teacher = run.frozen_teacher(inputs) if run.config.teacher == "frozen" else None
    losses = []
    with torch.no_grad():
        for candidate in run.sandwich(step):
            with run.adapters.applied(loaded.model, run.subnet(candidate)) as model:
                logits = model(input_ids=inputs).logits
            if teacher is None:
                losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item())
                teacher = torch.log_softmax(logits, dim=-1)
            else:
                losses.append(distillation_loss(logits, teacher).item())
    run.adapters.train()
    return losses


@pytest.mark.parametrize("teacher", ["frozen", "inplace"])
def test_one_step_reduces_the_loss(world, tmp_path, teacher):
    """Frozen teacher: the distilled subnets move toward the original model, and the full model with adapters
    starts exactly at it (KL 0); in place: the largest learns the data too."""
    run = trainer(world, tmp_path / "run", steps=1, teacher=teacher)
    before = sandwich_losses(run, 0)
    if teacher == "frozen":
        assert before[0] == pytest.approx(0.0, abs=1e-6)
    raw = run.train_step(0)
    after = sandwich_losses(run, 0)
    assert len(raw) == 4
    assert sum(after[1:]) < sum(before[1:])
    if teacher == "inplace":
        assert after[0] < before[0]
    else:                  # trained adapters add nothing at the full shape: the full model stays the original
        assert raw[0] == 0.0 and after[0] == pytest.approx(0.0, abs=1e-6)
        full = Subnet.full(ModelDims.from_config(run.loaded.model.config))
        assert not run.adapters.adapts(full) and run.adapters.adapts(run.subnet(run.space.smallest))
        merged = load_model(str(run.loaded.path)).model
        run.adapters.merge_into(merged, full)
        assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(),
                                                     run.loaded.model.state_dict().values()))


def test_schedule_warms_up_then_decays(world, tmp_path):
    run = trainer(world, tmp_path / "run", steps=20, warmup_pct=10.0)
    rates = []
    for _ in range(20):
        rates.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()
        run.scheduler.step()
    assert rates[0] == 0.0 and rates[2] == pytest.approx(1e-2) and rates[19] < rates[10] < rates[2]
    resumed = Trainer.__new__(Trainer)                 # the schedule is a pure function of the step taken
    resumed.config, resumed.optimizer = run.config, torch.optim.AdamW(run.adapters.parameters(), lr=1e-2)
    assert resumed._scheduler(7).get_last_lr()[0] == pytest.approx(rates[7])


def test_resume_gives_identical_state(world, tmp_path):
    straight = trainer(world, tmp_path / "straight", steps=4)
    straight.train()
    first = trainer(world, tmp_path / "resumed", steps=4)
    step = first.train_step

    def killed_after_two(index):
        if index == 2:
            raise KeyboardInterrupt
        return step(index)

    first.train_step = killed_after_two
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert [p.name for p in checkpoints(tmp_path / "resumed")] == ["step-000002"]
    second = trainer(world, tmp_path / "resumed", steps=4)       # a new process would start exactly like this
    assert second.record["step"] == 2
    second.train()
    for (name, a), b in zip(straight.adapters.state_dict().items(), second.adapters.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.record["history"] == second.record["history"]


def test_resume_refuses_different_settings(world, tmp_path):
    trainer(world, tmp_path / "run", steps=2).train()
    with pytest.raises(UserError, match=r"different training settings \(lr, steps\)"):
        trainer(world, tmp_path / "run", steps=4, lr=5e-3)
    loaded, strategy, root, data = world                 # the same strategy from another path (or cwd) resumes
    moved = tmp_path / "elsewhere.json"
    moved.write_bytes((root / "strategy.json").read_bytes())
    config = TrainConfig(steps=2, batch_size=2, seq_len=32, lr=1e-2, checkpoint_every=2)
    assert Trainer(loaded, strategy, moved, data, tmp_path / "run", config, ADAPTER, progress=False).record["step"] == 2


def test_bf16_weights_train_fp32_adapters_and_do_not_resume_an_fp32_run(world, tmp_path):
    """`amoeba finetune --dtype bfloat16`: the frozen model at half the memory, the adapters trained in fp32; a run
    made on other weights is refused on resume (its losses, hence its schedule of states, differ)."""
    loaded, strategy, root, data = world
    bf16 = load_model(str(loaded.path), "bfloat16")
    config = TrainConfig(steps=2, batch_size=2, seq_len=32, lr=1e-2, checkpoint_every=2)
    run = Trainer(bf16, strategy, root / "strategy.json", data, tmp_path / "bf16", config, ADAPTER, progress=False)
    run.train()
    assert bf16.model.dtype == torch.bfloat16 and run.record["weights_dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in run.adapters.parameters())
    assert all(math.isfinite(v) for h in run.record["history"] for v in h["losses"])
    trainer(world, tmp_path / "fp32", steps=2).train()
    with pytest.raises(UserError, match="run on float32 weights, this one loads bfloat16"):
        Trainer(bf16, strategy, root / "strategy.json", data, tmp_path / "fp32", config, ADAPTER, progress=False)


def test_balancing_rescales_to_the_reference():
    weight = torch.tensor(2.0, requires_grad=True)
    loss = weight ** 2                                  # 4, gradient 4
    scaled = balanced(loss, torch.tensor(0.5))
    assert scaled.item() == pytest.approx(0.5)
    scaled.backward()
    assert weight.grad.item() == pytest.approx(4 * 0.5 / 4)   # gradient scaled by ref / loss, direction unchanged


def test_distillation_loss_is_zero_for_the_teacher_itself():
    logits = torch.randn(2, 5, 11)
    teacher = torch.log_softmax(logits, -1)
    assert distillation_loss(logits, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(torch.randn(2, 5, 11), teacher).item() > 0


def test_training_data_readers(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps({"instruction": "Add", "input": "1+1", "output": "2"}) + "\n"
                    + json.dumps({"instruction": "Greet", "instances": [{"input": "", "output": "Hi"}]}) + "\n")
    texts = read_training_texts(good)
    assert "### Input:\n1+1" in texts[0] and "### Response:\nHi" in texts[1] and "### Input" not in texts[1]
    completion = tmp_path / "mmlu.jsonl"                       # the MMLU calibration file's records
    completion.write_text(json.dumps({"subject": "x", "input": "Q?\nA. 1\nB. 2\nAnswer:", "output": "B"}) + "\n")
    assert read_training_texts(completion) == ["Q?\nA. 1\nB. 2\nAnswer: B"]
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(UserError, match=r"b.jsonl:2: missing string field 'instruction'"):
        read_training_texts(bad)
    with pytest.raises(UserError, match="not found"):
        read_training_texts(tmp_path / "missing.jsonl")


def test_a_frozen_teacher_refuses_to_train_the_full_model_alone(world, tmp_path):
    """Distilling the original model into its own full shape trains nothing (KL 0): refused, not run for nothing."""
    loaded, strategy, root, data = world
    full = Subnet.full(ModelDims.from_config(loaded.model.config))
    for target in (None, full):                  # the sandwich's largest alone, or --subnet naming the full model
        with pytest.raises(UserError, match="nothing would be trained"):
            Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "run",
                    TrainConfig(steps=1, batch_size=2, seq_len=32, subnets_per_step=1), ADAPTER, progress=False,
                    target=target)
    assert not (tmp_path / "run").exists()
    trainer(world, tmp_path / "inplace", steps=1, subnets_per_step=1, teacher="inplace")   # learns the data: fine


def test_adapters_for_another_model_are_refused(world, tmp_path, tiny_dir):
    from tests.conftest import build_tiny

    trainer(world, tmp_path / "run", steps=1, checkpoint_every=1).train()
    other = load_model(str(build_tiny(tmp_path / "other", seed=1, intermediate_size=40)))
    with pytest.raises(UserError, match="trained on model"):
        load_adapters(other, tmp_path / "run")


def test_cli_finetune_evaluate_extract(world, tmp_path, tiny_dir, tiny_data):
    root = world[2]
    common = ["--model", str(tiny_dir), "--data-dir", str(tiny_data)]
    instructions = tmp_path / "tasks.jsonl"
    instructions.write_text("".join(json.dumps({"instruction": f"Count to {n}", "input": "",
                                                "output": " ".join(map(str, range(n)))}) + "\n" for n in range(9)))
    result = amoeba("finetune", "--strategy", root / "strategy.json", "--out", tmp_path / "ad", "--steps", "2",
                    "--seq-len", "32", "--batch-size", "2", "--experts", "3", "--rank", "4", "--data", instructions,
                    "--data", tiny_data / "wikitext2" / "valid.txt", "--corpus-samples", "4", *common)
    assert result.returncode == 0, result.stderr
    corpus = (tmp_path / "ad" / "corpus.jsonl").read_text().splitlines()      # generated by the model, then used
    assert len(corpus) == 5 and json.loads(corpus[0])["settings"]["samples"] == 4
    result = amoeba("subnet", "--strategy", root / "strategy.json", "--layers", "3", "--heads", "4", "--mlp", "0.5",
                    "--model", str(tiny_dir), "--out", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    result = amoeba("evaluate", "--adapters", tmp_path / "ad", "--subnet", tmp_path / "s.json", "--tasks",
                    "wikitext2", "--seq-len", "32", "--out", tmp_path / "e.json", *common)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e.json").read_text())["adapters"]["step"] == 2
    result = amoeba("extract", "--adapters", tmp_path / "ad", "--subnet", tmp_path / "s.json", "--out",
                    tmp_path / "ckpt", "--model", str(tiny_dir))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "ckpt" / "amoeba_subnet.json").read_text())["adapters_merged"]["step"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    result = amoeba("finetune", "--strategy", root / "strategy.json", "--data", bad, "--out", tmp_path / "ad2",
                    *common)
    assert result.returncode == 2 and "bad.jsonl:1: missing string field 'output'" in result.stderr


def test_adapters_refuse_another_strategy(world, tmp_path):
    import copy

    loaded, strategy, _, _ = world
    trainer(world, tmp_path / "run", steps=1, checkpoint_every=1).train()
    adapters = load_adapters(loaded, tmp_path / "run")
    adapters.check_strategy(strategy)                      # the one it was trained with
    other = copy.deepcopy(strategy)
    other.depth.rows = other.depth.rows[:-1]
    with pytest.raises(UserError, match="trained with strategy"):
        adapters.check_strategy(other)


def test_gradient_checkpointing_gives_the_same_step(world, tmp_path):
    """Recomputing activations in backward (inside the subnet's view) must not change the update."""
    plain = trainer(world, tmp_path / "plain", steps=1)
    plain.train()
    checkpointed = trainer(world, tmp_path / "ckpt", steps=1, gradient_checkpointing=True)
    try:
        checkpointed.train()
    finally:
        world[0].model.gradient_checkpointing_disable()
        world[0].model.eval()
    for (name, a), b in zip(plain.adapters.state_dict().items(), checkpointed.adapters.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_search_with_adapters_uses_and_caches_fine_tuned_accuracy(world, tmp_path, tiny_data):
    """`amoeba search --adapters` after a search without, in the same storage: the proxy sees the adapted subnet,
    its values are cached apart, the study is another one (evaluated anew) and the record names the adapters."""
    from amoeba_search.profiling.lut import Setting
    from amoeba_search.profiling.profile import WidthGrid
    from amoeba_search.profiling.roofline import DeviceSpec, estimate_profile
    from amoeba_search.search.report import best_record
    from amoeba_search.search.session import SearchRequest, open_search, run_search
    from amoeba_search.search.study import feasible_best

    loaded, strategy, root, _ = world
    setting = Setting("decode", 32, 1, "float32")
    grid = WidthGrid.for_model(ModelDims.from_config(loaded.model.config), (0.5, 1.0), heads=(3, 6))
    spec = DeviceSpec("toy", 1.0, {"float32": 0.01}, {"bandwidth": 1.0, "compute": 1.0})
    estimate_profile(loaded, spec, tmp_path / "toy" / "roofline", [setting], grid)
    trainer(world, tmp_path / "run", steps=1, checkpoint_every=1).train()
    request = SearchRequest(str(root / "strategy.json"), "toy", "roofline", proxy_samples=2, min_depth=2,
                            storage=f"sqlite:///{tmp_path}/s.db", profiles_dir=str(tmp_path), data_dir=str(tiny_data))

    def searched(ctx):
        study = run_search(ctx, ctx.full_model_ms(), 3)
        return study, best_record(ctx, study, feasible_best(study, ctx.proxy), ctx.full_model_ms())

    plain = open_search(request, loaded)
    plain_name = plain.cache_name
    plain_study, plain_record = searched(plain)
    subnet = plain.subnet(Candidate(3, 6, 24))
    plain_ppl = plain.proxy.score(subnet)
    assert plain_record["adapters"] is None and plain.cache.evaluations > 0
    loaded.adapters = load_adapters(loaded, tmp_path / "run")
    try:
        adapted = open_search(request, loaded)
        assert plain_name != adapted.cache_name and "adapters-" in adapted.cache_name
        assert adapted.proxy.score(subnet) != pytest.approx(plain_ppl, rel=1e-6)
        study, record = searched(adapted)
        assert study.study_name != plain_study.study_name
        assert adapted.cache.evaluations > 0 and len(study.trials) == 3
        assert record["adapters"]["fingerprint"] == loaded.adapters.fingerprint
        same = record["candidate"] == plain_record["candidate"]
        if same and record["candidate"] == adapted.space.largest.key:       # frozen-teacher adapters add nothing at the full shape
            assert record["proxy_value"] == pytest.approx(plain_record["proxy_value"], rel=1e-9)
        elif same:
            assert record["proxy_value"] != pytest.approx(plain_record["proxy_value"], rel=1e-6)
    finally:
        loaded.adapters = None


def test_heterogeneous_sandwich_trains_per_layer_shapes(world, tmp_path):
    """--heterogeneous-per-step: the last random subnets of a step have their own shape per layer (removed,
    MLP-only, own widths; the first layer keeps attention); a step lowers their loss and the record names them;
    the SMoL router (one width per subnet) and too many per step are refused with one line."""
    loaded, strategy, root, data = world
    config = TrainConfig(steps=1, batch_size=2, seq_len=32, lr=1e-2, checkpoint_every=1, heterogeneous_per_step=2)
    plain = AdapterConfig(experts=1, top_k=1, rank=2)
    run = Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "run", config, plain, progress=False)
    chosen = run.sandwich(0)
    assert chosen[:2] == [run.space.largest, run.space.smallest] and len(chosen) == 4
    for shapes in chosen[2:]:
        assert len(shapes) == run.dims.num_layers and shapes[0][0] > 0
        assert all(s == (0, 0) or (s[0] in (0,) + tuple(run.space.heads) and s[1] in run.space.mlp) for s in shapes)
        subnet = run.subnet(shapes)
        assert [len(h) for h in subnet.heads] == [s[0] for s in shapes if s != (0, 0)]
    before = sandwich_losses(run, 0)
    record = run.train()
    after = sandwich_losses(run, 0)
    assert sum(after[2:]) < sum(before[2:])
    assert all(key.startswith("het") for key in record["history"][0]["subnets"][2:])
    assert load_adapters(loaded, tmp_path / "run").saw_heterogeneous      # `search --space heterogeneous` asks
    with pytest.raises(UserError, match="--experts 1"):
        Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "smol", config, ADAPTER, progress=False)
    with pytest.raises(UserError, match=r"--heterogeneous-per-step must be in 0\.\.2"):
        TrainConfig(heterogeneous_per_step=3)


def test_init_from_starts_at_trained_adapters_and_resumes_only_with_them(world, tmp_path):
    loaded, strategy, root, data = world
    plain = AdapterConfig(experts=1, top_k=1, rank=2)
    config = TrainConfig(steps=1, batch_size=2, seq_len=32, lr=1e-2, checkpoint_every=1)
    first = Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "a", config, plain, progress=False)
    first.train()
    second = Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "b", config, plain, progress=False,
                     init_from=tmp_path / "a")
    for a, b in zip(first.adapters.state_dict().values(), second.adapters.state_dict().values()):
        assert torch.equal(a, b)
    assert second.record["initialized_from"]["step"] == 1 and not load_adapters(loaded, tmp_path / "a").saw_heterogeneous
    second.train()
    with pytest.raises(UserError, match="other adapters"):          # its checkpoint, resumed without --init-from
        Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "b", config, plain, progress=False)
    with pytest.raises(UserError, match="another adapter"):
        Trainer(loaded, strategy, root / "strategy.json", data, tmp_path / "c", config,
                AdapterConfig(experts=1, top_k=1, rank=4), progress=False, init_from=tmp_path / "a")


def test_one_subnet_fine_tune_serves_that_subnet_only(world, tmp_path, tiny_dir, tiny_data):
    """`finetune --subnet`: every step distils that subnet alone and lowers its loss; the adapters merge into it
    (extract) but refuse any other subnet and a search, leave the full model alone, and resume only for it."""
    loaded, strategy, root, _ = world
    target = candidate_subnet(loaded.model, strategy, Candidate(3, 4, 24))
    other = candidate_subnet(loaded.model, strategy, Candidate(4, 4, 24))
    with pytest.raises(UserError, match="--subnets-per-step 1"):
        Trainer(loaded, strategy, root / "strategy.json", world[3], tmp_path / "k4", TrainConfig(steps=1), ADAPTER,
                progress=False, target=target)
    config = TrainConfig(steps=4, subnets_per_step=1, batch_size=2, seq_len=32, lr=1e-2, checkpoint_every=4)
    run = Trainer(loaded, strategy, root / "strategy.json", world[3], tmp_path / "one", config, ADAPTER,
                  progress=False, target=target)
    assert run.sandwich(0) == run.sandwich(3) == [target]
    before = sandwich_losses(run, 0)
    run.train()
    assert sandwich_losses(run, 0)[0] < before[0]
    assert {tuple(h["subnets"]) for h in run.record["history"]} == {(run.record["history"][0]["subnets"][0],)}
    adapters = load_adapters(loaded, tmp_path / "one")
    ids = torch.randint(0, 257, (1, 16))
    with torch.no_grad(), adapters.applied(loaded.model, target) as model:
        model(input_ids=ids)
    with pytest.raises(UserError, match="fine-tuned for one subnet"):
        with adapters.applied(loaded.model, other):
            pass
    with pytest.raises(UserError, match="fine-tuned for one subnet"):
        adapters.merge_into(load_model(str(loaded.path)).model, other)
    from amoeba_search.profiling.lut import Setting
    from amoeba_search.profiling.profile import WidthGrid
    from amoeba_search.profiling.roofline import DeviceSpec, estimate_profile
    from amoeba_search.search.session import SearchRequest, open_search

    grid = WidthGrid.for_model(ModelDims.from_config(loaded.model.config), (0.5, 1.0), heads=(3, 6))
    spec = DeviceSpec("toy", 1.0, {"float32": 0.01}, {"bandwidth": 1.0, "compute": 1.0})
    estimate_profile(loaded, spec, tmp_path / "toy" / "roofline", [Setting("decode", 32, 1, "float32")], grid)
    loaded.adapters = adapters
    try:
        with pytest.raises(UserError, match="fine-tuned for one subnet"):
            open_search(SearchRequest(str(root / "strategy.json"), "toy", "roofline", storage=f"sqlite:///{tmp_path}/"
                                      "s.db", profiles_dir=str(tmp_path), data_dir=str(tiny_data)), loaded)
    finally:
        loaded.adapters = None
    with pytest.raises(UserError, match="holds a run for subnet"):
        Trainer(loaded, strategy, root / "strategy.json", world[3], tmp_path / "one", config, ADAPTER,
                progress=False, target=other)
    with pytest.raises(UserError, match="holds a run for subnet"):
        trainer(world, tmp_path / "one", steps=4, checkpoint_every=4)
    # the CLI: train for a subnet file, extract it with the adapters merged, refuse another subnet and a search
    target.save(tmp_path / "s.json", loaded.fingerprint)
    other.save(tmp_path / "o.json", loaded.fingerprint)
    common = ["--model", str(tiny_dir), "--data-dir", str(tiny_data)]
    result = amoeba("finetune", "--strategy", root / "strategy.json", "--subnet", tmp_path / "s.json", "--out",
                    tmp_path / "cli", "--steps", "2", "--seq-len", "32", "--experts", "1", "--rank", "4",
                    "--data", tiny_data / "wikitext2" / "valid.txt", "--corpus", "none", *common)
    assert result.returncode == 0, result.stderr
    assert "for one subnet (" in result.stdout and json.loads((tmp_path / "cli" / "step-000002" / "adapters.json").read_text()
                                                 )["training"]["subnets_per_step"] == 1
    result = amoeba("extract", "--adapters", tmp_path / "cli", "--subnet", tmp_path / "s.json", "--out",
                    tmp_path / "ckpt", "--model", str(tiny_dir))
    assert result.returncode == 0, result.stderr
    result = amoeba("extract", "--adapters", tmp_path / "cli", "--subnet", tmp_path / "o.json", "--out",
                    tmp_path / "ckpt2", "--model", str(tiny_dir))
    assert result.returncode == 2 and "fine-tuned for one subnet" in result.stderr
    assert not (tmp_path / "ckpt2").exists()
    result = amoeba("finetune", "--subnet", tmp_path / "missing.json", "--out", tmp_path / "x", *common)
    assert result.returncode == 2 and "--subnet" in result.stderr and "no such file" in result.stderr


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned(monkeypatch):
    from amoeba_search import artifacts
    from amoeba_search.finetune.recipe import slow_precision_warning

    monkeypatch.setattr(artifacts, "cpu_flags", lambda: {"avx2", "fma"})
    assert "--mixed-precision no" in slow_precision_warning("bf16", on_cuda=False)
    assert slow_precision_warning("no", on_cuda=False) is None
    assert slow_precision_warning("bf16", on_cuda=True) is None
    monkeypatch.setattr(artifacts, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert slow_precision_warning("bf16", on_cuda=False) is None
    monkeypatch.setattr(artifacts, "cpu_flags", lambda: set())          # flags unknown: no guess
    assert slow_precision_warning("bf16", on_cuda=False) is None
