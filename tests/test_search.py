"""Search: the space, the latency constraint, resume without re-evaluation, accuracy reuse across devices,
several workers on one study (journal file, SQLite, PostgreSQL when available), Pareto rows and their plot."""

from __future__ import annotations

import os
import subprocess
import sys
import json

import optuna
import pytest
import torch

from amoeba_search.data import read_text
from amoeba_search.errors import UserError
from amoeba_search.plot import pareto_figure, render, render_html
from amoeba_search.profiling.lut import Setting
from amoeba_search.profiling.profile import WidthGrid
from amoeba_search.profiling.roofline import DeviceSpec, estimate_profile
from amoeba_search.search.report import pareto_rows
from amoeba_search.search.session import SearchRequest, open_search
from amoeba_search.search.study import (FINISHED, LATENCY_CONSTRAINT, SearchContext, feasible_best, finished, pareto,
                                        search, search_study_name, write_csv)
from amoeba_search.selection.space import Candidate
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.select import select_depth
from amoeba_search.subnet import ModelDims

SETTING = Setting("decode", 32, 1, "float32")
SPEC = DeviceSpec("toy", 1.0, {"float32": 0.01}, {"bandwidth": 1.0, "compute": 1.0},
                  {"per_call": 0.2, "per_block": 0.05})


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir, tiny_data):
    """A DP + FLAP strategy for the tiny model and two estimated device profiles."""
    from amoeba_search.models import load_model

    root = tmp_path_factory.mktemp("search")
    loaded = load_model(str(tiny_dir))
    calibration = text_calibration(loaded.tokenizer, read_text(tiny_data / "wikitext2" / "valid.txt"), 4, 32)
    strategy = select_depth(loaded, calibration, "dp", max_removed=3, progress=False)
    strategy.save(root / "strategy.json")
    grid = WidthGrid.for_model(ModelDims.from_config(loaded.model.config), (0.5, 1.0), heads=(3, 6))
    for name, spec in (("toy", SPEC), ("toy2", DeviceSpec("toy2", 3.0, {"float32": 0.05},
                                                          {"bandwidth": 1.0, "compute": 1.0}))):
        estimate_profile(loaded, spec, root / "profiles" / name / "roofline", [SETTING], grid)
    return loaded, strategy, root, tiny_data


def context(world, device="toy", storage=None, **space_kw):
    """The search the CLI would open, through the same session call (the loaded model passed in)."""
    loaded, _, root, data = world
    request = SearchRequest(str(root / "strategy.json"), device, "roofline", proxy_samples=2,
                            storage=storage or f"sqlite:///{root}/s.db", profiles_dir=str(root / "profiles"),
                            data_dir=str(data), **{"min_depth": 2, **space_kw})
    return open_search(request, loaded)


def test_space_is_valid_and_floored(world):
    ctx = context(world)
    assert ctx.space.depths == (2, 3, 4, 5) and ctx.space.heads == (3, 6) and ctx.space.mlp == (24, 48)
    assert ctx.space.size == 16 and ctx.space.largest == Candidate(5, 6, 48)
    floored = context(world, min_depth=4, min_heads=6)
    assert floored.space.depths == (4, 5) and floored.space.heads == (6,)
    with pytest.raises(UserError, match="empty search space"):
        context(world, min_depth=9)


def test_constraint_respected_and_infeasible_never_evaluated(world, tmp_path):
    ctx = context(world, storage=f"sqlite:///{tmp_path}/a.db")
    target = ctx.resolve_target(None, 0.6)
    study = search(ctx, target, 12, seed=1)
    best = feasible_best(study, ctx.proxy)
    assert best.user_attrs["latency_ms"] <= target
    evaluated = {t.user_attrs["key"] for t in finished(study) if t.user_attrs["evaluated"]}
    assert all(t.user_attrs["latency_ms"] <= target for t in finished(study) if t.user_attrs["evaluated"])
    # rejected trials end PRUNED with a positive constraint and no objective value (nothing to swamp a plot)
    rejected = [t for t in finished(study) if not t.user_attrs["evaluated"]]
    assert rejected and all(t.state == optuna.trial.TrialState.PRUNED and t.value is None and
                            t.constraints[LATENCY_CONSTRAINT] > 0 for t in rejected)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.constraints[LATENCY_CONSTRAINT] <= 0
               for t in finished(study) if t.user_attrs["evaluated"])
    assert ctx.cache.evaluations == len(evaluated)             # one evaluation per distinct feasible subnet
    exhaustive = {c.key: ctx.candidate_accuracy(c) for c in ctx.space.candidates() if ctx.latency_ms(c) <= target}
    assert best.value >= min(exhaustive.values())


def test_target_errors(world):
    ctx = context(world)
    with pytest.raises(UserError, match="below the fastest subnet in the space .*2 layers"):
        ctx.resolve_target(0.001, None)
    with pytest.raises(UserError, match="give one of --target-ms or --target-ratio"):
        ctx.resolve_target(None, None)


def test_resume_runs_only_missing_trials_without_reevaluation(world, tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    ctx = context(world, storage=url)
    target = ctx.resolve_target(None, 0.8)
    search(ctx, target, 6, seed=0)
    again = context(world, storage=url)                          # a new process would start like this
    study = search(again, target, 10, seed=0)
    assert len(finished(study)) == 10
    new_keys = {t.user_attrs["key"] for t in finished(study)[6:] if t.user_attrs["evaluated"]}
    old_keys = {t.user_attrs["key"] for t in finished(study)[:6] if t.user_attrs["evaluated"]}
    assert again.cache.evaluations == len(new_keys - old_keys)
    third = context(world, storage=url)
    search(third, target, 10, seed=0)
    assert third.cache.evaluations == 0


def test_accuracy_is_reused_across_devices(world, tmp_path):
    url = f"sqlite:///{tmp_path}/d.db"
    first = context(world, storage=url)
    for c in first.space.candidates():
        first.candidate_accuracy(c)
    other = context(world, device="toy2", storage=url)
    study = search(other, other.resolve_target(None, 0.7), 8, seed=3)
    assert other.cache.evaluations == 0 and len(finished(study)) == 8


def test_model_mismatch_is_refused(world, tmp_path):
    from amoeba_search.profiling.lut import LookupTable

    loaded, strategy, root, _ = world
    lut = LookupTable.load(root / "profiles" / "toy" / "roofline")
    lut.meta["model"] = {"name": "other", "config_sha256": "0"}
    with pytest.raises(UserError, match="profile toy/roofline was made for model"):
        SearchContext(loaded, strategy, lut, SETTING, context(world).space, context(world).proxy,
                      f"sqlite:///{tmp_path}/m.db")


def _worker_command(world, storage, trials, seed):
    loaded, _, root, data = world
    return [sys.executable, "-c", "from amoeba_search.cli import main; main()", "search", "--model", loaded.path,
            "--strategy", root / "strategy.json", "--device", "toy", "--flow", "roofline", "--profiles-dir",
            root / "profiles", "--target-ratio", "0.8", "--trials", trials, "--seed", seed, "--storage", storage,
            "--min-depth", "2", "--proxy-samples", "2", "--data-dir", data, "--out", root / f"best{seed}.json",
            "--threads", "1"]


def _run_two_workers(world, storage):
    env = {**os.environ}
    procs = [subprocess.Popen(list(map(str, _worker_command(world, storage, 8, seed))), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for seed in (11, 12)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    return procs


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(world, tmp_path, kind):
    storage = f"journal:{tmp_path}/j.log" if kind == "journal" else f"sqlite:///{tmp_path}/w.db"
    _run_two_workers(world, storage)
    _check_shared_study(world, storage)


def _check_shared_study(world, storage):
    from amoeba_search.search.storage import open_storage

    summaries = [s for s in optuna.get_all_study_summaries(open_storage(storage)) if "amoeba-search" in s.study_name]
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=open_storage(storage))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert sum(s in FINISHED for s in states) >= 8                  # both workers ran to the shared total
    assert all(s in FINISHED for s in states)                       # no trial lost, failed or left running
    assert len({t.number for t in study.trials}) == len(study.trials)


@pytest.mark.skipif(not os.environ.get("AMOEBA_TEST_POSTGRES"), reason="set AMOEBA_TEST_POSTGRES to a server URL")
def test_two_workers_share_one_study_on_postgresql(world):
    url = os.environ["AMOEBA_TEST_POSTGRES"]
    from amoeba_search.search.storage import open_storage

    storage = open_storage(url)
    for summary in optuna.get_all_study_summaries(storage):
        optuna.delete_study(study_name=summary.study_name, storage=storage)
    _run_two_workers(world, url)
    _check_shared_study(world, url)


def test_pareto_rows_and_plot(world, tmp_path):
    ctx = context(world, storage=f"sqlite:///{tmp_path}/p.db")
    study = pareto(ctx, 10, seed=0)
    rows = pareto_rows(ctx, study)
    series = {r["series"] for r in rows}
    assert series == {"search trials", "search front", "depth only (DP)", "width only (FLAP)", "drop-last-k"}
    front_rows = sorted((r for r in rows if r["series"] == "search front"), key=lambda r: r["latency_ms"])
    assert all(a["value"] > b["value"] for a, b in zip(front_rows, front_rows[1:]))   # ppl falls as latency rises
    path = write_csv(tmp_path / "pareto.csv", rows)
    best = front_rows[len(front_rows) // 2]
    figure = pareto_figure([path, path], [0.5, 0.8], marks=[("chosen", best["latency_ms"], best["value"])])
    panel = figure.panels[0]
    assert [s.label for s in panel.series] == ["search trials", "search front", "depth only (DP)",
                                               "width only (FLAP)", "drop-last-k", "full model", "chosen"]
    full_ms = rows[0]["full_model_ms"]
    assert [label for label, _ in panel.vlines] == [f"50% target ({0.5 * full_ms:.1f} ms)",
                                                    f"80% target ({0.8 * full_ms:.1f} ms)"]
    assert "wikitext2/valid.txt" in panel.ylabel and figure.title == "ppl vs predicted latency"
    low, high = panel.ylim                      # the front and the marks fit; anything beyond sits on the edge
    assert all(low <= v <= high for s in panel.series for v in s.y)
    assert all(low <= r["value"] <= high for r in front_rows)
    paths = render(figure, tmp_path / "fig")
    assert all(p.stat().st_size > 1000 for p in paths)
    assert panel.xlabel == "predicted TPOT (ms)"
    assert all(r["tokens_per_s"] == pytest.approx(1e3 / r["latency_ms"]) for r in rows)    # decode, batch 1
    front_series = panel.series[1]
    assert front_series.labels == [r["key"] for r in front_rows]         # HTML hover names each subnet
    page = render_html(figure, tmp_path / "fig.html").read_text()
    assert front_rows[0]["key"] in page and "plotly" in page


def test_search_cli_writes_best_subnet(world, tmp_path):
    loaded, _, root, _ = world
    storage = f"sqlite:///{tmp_path}/c.db"
    run = subprocess.run(list(map(str, _worker_command(world, storage, 6, 0))), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    best = json.loads((root / "best0.json").read_text())
    assert best["search"]["predicted_ms"] <= best["search"]["target_ms"]
    assert len(best["layers"]) == best["search"]["depth"] and best["model"] == loaded.fingerprint


def test_corrupt_storage_is_one_line(world, tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database " * 200)
    with pytest.raises(UserError, match="study storage sqlite:///.*bad.db is unusable"):
        context(world, storage=f"sqlite:///{bad}").cache
    with pytest.raises(UserError, match="give an RDB URL"):
        context(world, storage="studies.db").storage


KILLED_SEARCH = """
import os, signal, sys
from amoeba_search.runtime import configure
from amoeba_search.search.session import SearchRequest, open_search, run_search

strategy, profiles, data, storage, kill_at = sys.argv[1:6]
configure(1)
ctx = open_search(SearchRequest(strategy, "toy", "roofline", proxy_samples=2, min_depth=2, storage=storage,
                                profiles_dir=profiles, data_dir=data, model=sys.argv[6]))
score, calls = ctx.proxy.score, [0]

def dying(subnet):
    calls[0] += 1
    if calls[0] == int(kill_at):          # kill -9 in the middle of a trial's accuracy evaluation
        os.kill(os.getpid(), signal.SIGKILL)
    return score(subnet)

ctx.proxy.score = dying
run_search(ctx, ctx.resolve_target(None, 0.8), 12, seed=0, prune_dominated=False)
"""


def test_search_killed_mid_trial_resumes_without_loss(world, tmp_path):
    """kill -9 during a trial, then resume: the same trials (numbers, subnets, values) and the same best as an
    uninterrupted run; no trial left RUNNING."""
    from amoeba_search.search.session import run_search

    loaded, _, root, data = world
    killed_url = f"sqlite:///{tmp_path}/killed.db"
    run = subprocess.run([sys.executable, "-c", KILLED_SEARCH, str(root / "strategy.json"), str(root / "profiles"),
                          str(data), killed_url, "6", str(loaded.path)], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr                       # it really died mid-trial
    resumed_ctx = context(world, storage=killed_url)
    target = resumed_ctx.resolve_target(None, 0.8)
    left = optuna.load_study(study_name=search_study_name(resumed_ctx, target, "tpe", prune_dominated=False),
                             storage=resumed_ctx.storage)
    assert [t.state for t in left.trials].count(optuna.trial.TrialState.RUNNING) == 1
    resumed = run_search(resumed_ctx, target, 12, seed=0, prune_dominated=False)
    uninterrupted_ctx = context(world, storage=f"sqlite:///{tmp_path}/whole.db")
    uninterrupted = run_search(uninterrupted_ctx, target, 12, seed=0, prune_dominated=False)

    def history(study):
        return [(t.number, t.state, t.user_attrs["key"], t.user_attrs["evaluated"]) for t in study.trials]

    assert history(resumed) == history(uninterrupted)
    def values(study):                       # rejected (pruned) trials have no value
        return [float("nan") if t.value is None else t.value for t in study.trials]

    assert values(resumed) == pytest.approx(values(uninterrupted), rel=1e-6, nan_ok=True)
    best, whole_best = feasible_best(resumed, resumed_ctx.proxy), feasible_best(uninterrupted, uninterrupted_ctx.proxy)
    assert best.user_attrs["key"] == whole_best.user_attrs["key"]
    assert all(t.state in FINISHED for t in resumed.trials)


def test_resumable_tpe_proposes_what_an_uninterrupted_sampler_would():
    """A fresh sampler (a resumed process) continues a study exactly as the one that ran it from the start."""
    from amoeba_search.search.study import ResumableTPE

    def objective(trial):
        return (trial.suggest_int("x", 0, 10**6) - 3 * 10**5) ** 2 + trial.suggest_float("y", -1, 1) ** 2

    def run(splits, sampler):
        study = optuna.create_study(sampler=sampler())
        for n in splits:
            study.sampler = sampler()                 # a new process, same seed
            study.optimize(objective, n_trials=n)
        return [t.params for t in study.trials]

    resumable = lambda: ResumableTPE(0, n_startup_trials=3)                        # noqa: E731
    plain = lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=3)          # noqa: E731
    assert run([12], resumable) == run([7, 5], resumable) == run([2, 3, 7], resumable)
    assert run([12], plain) != run([7, 5], plain)     # what plain TPE does on resume: the test can fail


def test_search_on_an_imported_profile(world, tmp_path):
    """A profile imported from another device's CSV is searchable like a measured one."""
    import pandas as pd

    from amoeba_search.profiling.profile import import_profile
    from amoeba_search.profiling.store import ProfileStore
    from amoeba_search.search.session import run_search

    loaded, _, root, data = world
    rows = [{"phase": "decode", "tokens": 32, "batch": 1, "dtype": "float16", "layers": 0, "heads": 0, "mlp": 0,
             "median_ms": 1.0}]
    rows += [{"phase": "decode", "tokens": 32, "batch": 1, "dtype": "float16", "layers": 4, "heads": h, "mlp": m,
              "median_ms": 1.0 + 4 * (0.1 + h / 60 + m / 480)} for h in (3, 6) for m in (24, 48)]
    pd.DataFrame(rows).to_csv(tmp_path / "orin.csv", index=False)
    import_profile(loaded, tmp_path / "orin.csv", ProfileStore(tmp_path / "profiles"), "orin", "tensorrt-llm")
    request = SearchRequest(str(root / "strategy.json"), "orin", "tensorrt-llm", proxy_samples=2, min_depth=2,
                            storage=f"sqlite:///{tmp_path}/s.db", profiles_dir=str(tmp_path / "profiles"),
                            data_dir=str(data))
    ctx = open_search(request, loaded)
    target = ctx.resolve_target(None, 0.7)
    best = feasible_best(run_search(ctx, target, 6), ctx.proxy)
    assert best is not None and best.user_attrs["latency_ms"] <= target


def test_search_without_compensation_is_another_study(world, tmp_path):
    plain = context(world, storage=f"sqlite:///{tmp_path}/n.db")
    bare = context(world, storage=f"sqlite:///{tmp_path}/n.db", compensate=False)
    candidate = Candidate(3, 3, 24)
    assert plain.subnet(candidate).bias is not None and bare.subnet(candidate).bias is None
    assert bare.cache_name != plain.cache_name and bare.study_name("search") != plain.study_name("search")


def test_search_loads_the_model_in_the_dtype_asked_and_keeps_its_scores_apart(world, tmp_path):
    """--model-dtype bfloat16 halves the model's memory; its accuracies are cached and studied apart from fp32's
    (the same network, scored slightly differently)."""
    loaded, _, root, data = world
    request = dict(strategy=str(root / "strategy.json"), device="toy", flow="roofline", proxy_samples=2,
                   storage=f"sqlite:///{tmp_path}/d.db", profiles_dir=str(root / "profiles"), data_dir=str(data),
                   min_depth=2, model=str(loaded.path))
    fp32 = open_search(SearchRequest(**request))
    bf16 = open_search(SearchRequest(**request, model_dtype="bfloat16"))
    assert fp32.loaded.model.dtype == torch.float32 and bf16.loaded.model.dtype == torch.bfloat16
    assert bf16.cache_name == fp32.cache_name + "/bfloat16"
    assert bf16.study_name("search") != fp32.study_name("search")
    candidate = Candidate(3, 3, 24)
    assert bf16.candidate_accuracy(candidate) != fp32.candidate_accuracy(candidate)
    assert abs(bf16.candidate_accuracy(candidate) / fp32.candidate_accuracy(candidate) - 1) < 0.1


def test_pruned_search_starts_on_the_boundary(world, tmp_path):
    """The first trials are the deepest feasible subnet of each width (nearest the target first), by trial number."""
    from amoeba_search.search.study import boundary

    ctx = context(world, storage=f"sqlite:///{tmp_path}/b.db")
    target = ctx.resolve_target(None, 0.7)
    study = search(ctx, target, 8, seed=0)
    first = boundary(ctx, target)
    assert first and all(t.user_attrs["key"] == c.key for t, c in zip(study.trials, first))


RACE = """
import sys, optuna
from amoeba_search.search.study import FirstTrialsFixed
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = optuna.storages.RDBStorage(sys.argv[1], engine_kwargs={"connect_args": {"timeout": 60}})
study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True, sampler=FirstTrialsFixed(
    optuna.samplers.RandomSampler(0), [{"x": float(i)} for i in range(60)]))
study.optimize(lambda t: t.suggest_float("x", 0, 100), n_trials=30)
"""


def test_fixed_first_trials_survive_two_sqlite_workers(tmp_path):
    """Optuna's trial queue on SQLite let two workers pop one queued trial (measured: 'Cannot tell a COMPLETE
    trial'); numbered first trials cannot collide."""
    url = f"sqlite:///{tmp_path}/race.db"
    optuna.create_study(storage=url, study_name="s")
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 60 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.params["x"] == t.number for t in trials)


def test_extract_report_warns_when_the_full_model_is_off_its_profile(world, tmp_path, monkeypatch):
    """The flow itself is the last check of the machine: a full model timed at twice its prediction is reported
    with the subnet's share of the full model, predicted and measured, and --strict refuses before any quality run."""
    from amoeba_search.profiling import load as load_module
    from amoeba_search.profiling import profile as profile_module
    from amoeba_search.profiling.harness import StopRule
    from amoeba_search.search.report import best_record, verify, write_best

    loaded, _, root, data = world
    profiles = tmp_path / "profiles"
    grid = WidthGrid.for_model(ModelDims.from_config(loaded.model.config), (0.5, 1.0), heads=(3, 6))
    profile_module.build_profile(loaded, profiles / "here" / "torch-eager", "here", "torch-eager", [SETTING], grid,
                                 layers_per_row=2, rule=StopRule(warmup=1, min_repeats=3, max_repeats=5, rel=0.5,
                                                                 max_seconds=1.0), passes=1, progress=False)
    request = SearchRequest(str(root / "strategy.json"), "here", "torch-eager", proxy_samples=2,
                            storage=f"sqlite:///{tmp_path}/v.db", profiles_dir=str(profiles), data_dir=str(data),
                            min_depth=2)
    ctx = open_search(request, loaded)
    target = ctx.resolve_target(None, 1.0)             # timed on a busy machine: any subnet fits
    study = search(ctx, target, 6, seed=0)
    best_path = write_best(ctx, best_record(ctx, study, feasible_best(study, ctx.proxy), target), tmp_path / "b.json")
    predicted = json.loads(best_path.read_text())["search"]["predicted_ms"]

    def twice_as_slow(flow, model, setting, passes=3, estimator="median", pairing=None):
        measured = 2 * (ctx.full_model_ms() if model is loaded.model else predicted)
        return {"measured_ms": measured, "median_ms": measured, "p10_ms": measured, "p90_ms": measured}

    monkeypatch.setattr(profile_module, "measured_latency", twice_as_slow)
    monkeypatch.setattr(load_module, "load_warnings", lambda environment=None: [])     # the probes see nothing
    result = verify(ctx, best_path, tmp_path / "ckpt", data, windows=2, questions=4, passes=1)
    (line,) = result["load_warnings"]
    share = f"{predicted / ctx.full_model_ms():.0%}"
    assert "(+100%): this machine is not in the state its profile was made in" in line
    assert f"the subnet is {share} of the full model predicted, {share} measured" in line
    quality_runs = []
    monkeypatch.setattr("amoeba_search.quality.quality", lambda *a, **k: quality_runs.append(1))
    with pytest.raises(UserError, match="--strict: the full model measured"):
        verify(ctx, best_path, tmp_path / "ckpt2", data, windows=2, questions=4, passes=1, strict=True)
    assert quality_runs == []


def test_self_ppl_is_the_perplexity_of_held_out_text_the_full_model_wrote(tiny, tiny_data, tmp_path, monkeypatch):
    from amoeba_search.data import read_training_texts
    from amoeba_search.finetune.corpus import CorpusSettings, generate_corpus
    from amoeba_search.models import CACHE_ENV
    from amoeba_search.search.proxies import PROXIES, self_ppl
    from amoeba_search.search.proxies.self_ppl import held_out_windows
    from amoeba_search.subnet import Subnet

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    ids = held_out_windows(tiny, tiny_data, 2, 64)                                 # (2, 64)
    cached = list((tmp_path / "cache" / "held_out_text").iterdir())
    assert [p.suffix for p in cached] == [".jsonl"]                                # one whole file, no temp left
    monkeypatch.setattr(self_ppl, "generate_corpus", lambda *a, **k: pytest.fail("the cached text was rewritten"))
    proxy = PROXIES.get("self_ppl")(tiny, tiny_data, samples=2, seq_len=64)
    with torch.inference_mode():
        logits = tiny.model(input_ids=ids).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert proxy.score(Subnet.full(ModelDims.from_config(tiny.model.config))) == pytest.approx(expected.exp().item(),
                                                                                              rel=1e-5)
    assert torch.equal(ids, held_out_windows(tiny, tiny_data, 2, 64))             # the same text, read back
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "fresh"))
    assert torch.equal(ids, held_out_windows(tiny, tiny_data, 2, 64))             # and when written anew
    training = read_training_texts(generate_corpus(tiny, tiny_data / "instructions" / "alpaca_seed_tasks.jsonl",
                                                   tmp_path / "train.jsonl", CorpusSettings(samples=4, batch_size=4),
                                                   progress=False))
    stream = [t for text in training for t in tiny.tokenizer(text)["input_ids"]]
    assert stream[:64] != ids[0].tolist()                   # not the training corpus's default-seed samples
    with pytest.raises(UserError, match="lower --proxy-samples"):
        held_out_windows(tiny, tiny_data, 10_000, 256)
    cached[0].write_text(cached[0].read_text().splitlines(keepends=True)[0])      # a cache file cut to its header
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(UserError, match="delete it"):
        held_out_windows(tiny, tiny_data, 2, 64)
