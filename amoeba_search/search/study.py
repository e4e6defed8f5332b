"""Optuna studies over the space: single-objective search under a latency constraint, and multi-objective Pareto
search. Latency comes from the device profile (microseconds per prediction), so infeasible candidates are
rejected before any accuracy evaluation; accuracy evaluations go through the shared cache."""

from __future__ import annotations

import functools
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from ..artifacts import write_csv_atomic
from ..errors import UserError
from ..models import LoadedModel
from ..profiling.lut import LookupTable, Setting
from ..profiling.predictor import Predictor, setting_key
from ..runtime import quiet_optuna
from ..selection.strategy import Strategy
from ..subnet import Subnet
from ..families.base import model_dims
from .proxies.base import Proxy
from ..selection.space import Candidate, SearchSpace, candidate_subnet
from .storage import AccuracyCache, open_storage, storage_errors

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
LATENCY_CONSTRAINT = "latency_over_bound_ms"   # > 0: over the target (or pruned as dominated); TPE learns from it


@dataclass
class SearchContext:
    """Everything one search needs: model + strategy (what a candidate is), profile (its latency), proxy (its
    accuracy) and the storage shared by all studies and the accuracy cache."""

    loaded: LoadedModel
    strategy: Strategy
    lut: LookupTable
    setting: Setting
    space: SearchSpace
    proxy: Proxy
    storage_url: str
    use_correction: bool = True
    compensate: bool = True              # FLAP bias compensation in the candidates (off for families without the bias)
    request: object | None = None        # the session.SearchRequest it was opened from (worker processes reuse it)

    def __post_init__(self) -> None:
        self.strategy.check_model(self.loaded.fingerprint)
        if self.loaded.adapters is not None:
            self.loaded.adapters.check_strategy(self.strategy)
            if self.loaded.adapters.record.get("subnet"):
                raise UserError("these adapters were fine-tuned for one subnet (`amoeba finetune --subnet`), so they "
                                "say nothing about the others a search scores: search with one-for-all adapters, "
                                "then fine-tune the subnet it hands over")
        if self.lut.meta.get("model") != self.loaded.fingerprint:
            raise UserError(f"profile {self.lut.name} was made for model {self.lut.meta.get('model')}, not "
                            f"{self.loaded.fingerprint}: profile this model")
        self.dims = model_dims(self.loaded.model.config)
        self.predictor = Predictor(self.lut, self.use_correction)

    @functools.cached_property
    def storage(self):
        """Opened on first use, so that bad arguments (a target below the fastest subnet) are refused before a
        study database is created."""
        with storage_errors(self.storage_url), quiet_optuna():
            return open_storage(self.storage_url)

    @functools.cached_property
    def cache(self) -> AccuracyCache:
        with storage_errors(self.storage_url), quiet_optuna():
            return AccuracyCache(self.storage, self.cache_name)

    @property
    def variant_suffix(self) -> str:
        """Fine-tuned accuracy, uncompensated subnets and weights in another dtype than float32 are other
        objectives: their studies and caches are named apart."""
        adapters = self.loaded.adapters
        dtype = self.loaded.dtype_name
        return (f"/adapters-{adapters.fingerprint}" if adapters is not None else "") + (
            "" if self.compensate else "/no-compensation") + ("" if dtype == "float32" else f"/{dtype}")

    @property
    def cache_name(self) -> str:
        """One cache per (model, strategy, proxy, adapters, compensation): shared by every device, flow, phase and
        target."""
        return (f"amoeba-accuracy/{self.loaded.fingerprint['config_sha256']}/{self.strategy.fingerprint}/"
                f"{self.proxy.fingerprint}{self.variant_suffix}")

    def latency_ms(self, candidate: Candidate) -> float:
        return self.predictor.predict_ms(self.setting, candidate.widths)

    def full_model_ms(self) -> float:
        d = self.dims
        return self.predictor.predict_ms(self.setting, [(d.num_heads, d.intermediate_size)] * d.num_layers)

    def subnet(self, candidate: Candidate) -> Subnet:
        return candidate_subnet(self.loaded.model, self.strategy, candidate, compensate=self.compensate)

    def accuracy(self, key: str, subnet_of) -> float:
        return self.cache.get(key, lambda: self.proxy.score(subnet_of()))

    def candidate_accuracy(self, candidate: Candidate) -> float:
        return self.accuracy(candidate.key, lambda: self.subnet(candidate))

    def study_name(self, kind: str, extra: str = "") -> str:
        """Everything that changes a study's values: model, strategy, profile (its content hash, and whether its
        correction is applied), setting, proxy, space, adapters and compensation; `extra` adds target and sampler."""
        space = self.space
        uncorrected = not self.use_correction and (self.lut.directory / "correction.json").is_file()
        return (f"amoeba-{kind}/{self.loaded.fingerprint['config_sha256']}/{self.strategy.fingerprint}/"
                f"{self.lut.name}@{self.lut.fingerprint}/{setting_key(self.setting)}/{self.proxy.fingerprint}/"
                f"{space.depths[0]}-{space.depths[-1]}x{','.join(map(str, space.heads))}x"
                f"{','.join(map(str, space.mlp))}{self.variant_suffix}{'/uncorrected' if uncorrected else ''}{extra}")

    def resolve_target(self, target_ms: float | None, target_ratio: float | None) -> float:
        """Absolute target, or a ratio of the full model's predicted latency; below the fastest subnet is an error."""
        if (target_ms is None) == (target_ratio is None):
            raise UserError("give one of --target-ms or --target-ratio")
        target = target_ms if target_ms is not None else target_ratio * self.full_model_ms()
        fastest = min(self.space.candidates(), key=self.latency_ms)
        if target < self.latency_ms(fastest):
            raise UserError(f"latency target {target:.3f} ms is below the fastest subnet in the space "
                            f"({self.latency_ms(fastest):.3f} ms: {fastest.depth} layers, {fastest.heads} heads, "
                            f"{fastest.mlp} MLP channels on {self.lut.name}); raise the target or lower the floors")
        return target


def suggest(trial: optuna.Trial, space: SearchSpace) -> Candidate:
    return Candidate(trial.suggest_categorical("depth", list(space.depths)),
                     trial.suggest_categorical("heads", list(space.heads)),
                     trial.suggest_categorical("mlp", list(space.mlp)))


def set_latency_constraint(trial: optuna.Trial, over_ms: float) -> None:
    """The trial's constraint value (Optuna's `trial.set_constraint`; feasible when <= 0). A trial a dead worker
    left behind may already carry it from before the crash: the same value, so the repeat is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constraint value is ignored.*")
        trial.set_constraint(LATENCY_CONSTRAINT, over_ms)


class ResumableTPE(optuna.samplers.TPESampler):
    """TPE whose random state before each trial depends only on (seed, number of finished trials), not on what
    the process sampled before: a study resumed after a crash proposes exactly what the uninterrupted one would."""

    def __init__(self, seed: int | None, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._base_seed is not None:
            state = (self._base_seed * 1_000_003 + len(finished(study))) % 2**32
            self._rng.rng.seed(state)                    # TPE's own draws
            self._random_sampler._rng.rng.seed(state)    # its startup / independent random sampler
        super().before_trial(study, trial)


class FirstTrialsFixed(optuna.samplers.BaseSampler):
    """Trial number i < len(first) takes the parameters first[i]; later trials go to `base`. This replaces
    Optuna's trial queue for seeding a study: on SQLite two workers can pop the same queued (WAITING) trial (the
    row lock SQLite lacks), run it twice and collide on finishing it (UpdateFinishedTrialError), while trial
    numbers are unique."""

    def __init__(self, base: optuna.samplers.BaseSampler, first: list[dict]) -> None:
        self.base, self.first = base, first

    def _fixed(self, trial: optuna.trial.FrozenTrial) -> dict | None:
        return self.first[trial.number] if trial.number < len(self.first) else None

    def infer_relative_search_space(self, study, trial):
        return {} if self._fixed(trial) is not None else self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if self._fixed(trial) is not None else self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        fixed = self._fixed(trial)
        if fixed is not None:
            return fixed[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_sampler(name: str, seed: int | None, multi_objective: bool = False) -> optuna.samplers.BaseSampler:
    with quiet_optuna():
        if name == "tpe":
            return ResumableTPE(seed, multivariate=True, n_startup_trials=5)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    raise UserError(f"--sampler {name!r}: choose tpe, random or nsga2 (multi-objective)")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ran to the end: evaluated (COMPLETE) or rejected by the latency constraint (PRUNED)."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def worker_id() -> str:
    """host:pid of this process, recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(trial: optuna.trial.FrozenTrial) -> bool:
    """A RUNNING trial whose worker process on this machine no longer exists (killed, crashed). Workers on other
    machines are left to the RDB storage's heartbeat."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_stale_trials(study: optuna.Study, objective) -> int:
    """Finish, in place, every trial a dead worker of this machine left RUNNING: the same trial number, its
    already-suggested (or enqueued) parameters, the same objective. The study's history then equals an
    uninterrupted run's, so a seeded resumed search evaluates the same subnets and returns the same best."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if _dead_here(t)]
    for frozen in stale:
        trial = optuna.trial.Trial(study, frozen._trial_id)
        try:
            study.tell(trial, objective(trial))
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return len(stale)


def feasible_best(study: optuna.Study, proxy: Proxy) -> optuna.trial.FrozenTrial | None:
    feasible = [t for t in finished(study) if t.user_attrs.get("evaluated")]
    if not feasible:
        return None
    return min(feasible, key=lambda t: t.value) if proxy.direction == "minimize" else max(feasible,
                                                                                          key=lambda t: t.value)


def dominated(ctx: SearchContext, candidate: Candidate, target_ms: float) -> bool:
    """Boundary pruning: if the next deeper subnet of the same width also meets the target, this one is skipped
    without evaluation, assuming the deeper one is at least as accurate (the DP's calibration loss falls with
    every layer it keeps back). An assumption, checked against exhaustive search in
    benchmarks/search_efficiency.py."""
    deeper = [d for d in ctx.space.depths if d > candidate.depth]
    return bool(deeper) and ctx.latency_ms(Candidate(min(deeper), candidate.heads, candidate.mlp)) <= target_ms


def boundary(ctx: SearchContext, target_ms: float) -> list[Candidate]:
    """Per width, the deepest subnet that meets the target, nearest the target first: the candidates boundary
    pruning leaves, known from latency predictions alone (microseconds), so the study starts from them."""
    best = {}
    for c in ctx.space.candidates():
        if ctx.latency_ms(c) <= target_ms and c.depth > best.get((c.heads, c.mlp), Candidate(0, 0, 0)).depth:
            best[(c.heads, c.mlp)] = c
    return sorted(best.values(), key=ctx.latency_ms, reverse=True)


def search_study_name(ctx: SearchContext, target_ms: float, sampler: str, prune_dominated: bool) -> str:
    """A target's study: pruned and unpruned searches record different values for the same subnets."""
    return ctx.study_name("search", f"/target={target_ms:.4f}/{sampler}" + ("" if prune_dominated else "/no-prune"))


def describe_study(ctx: SearchContext, study: optuna.Study, **extra) -> None:
    """What a study is about, in its user attributes (optuna-dashboard shows them): device, flow, phase, the
    profile's content hash, the proxy and its data, and the target."""
    attrs = {"device": ctx.lut.meta["device"], "flow": ctx.lut.meta["flow"], "setting": ctx.setting.label(),
             "profile_sha256": ctx.lut.fingerprint, "proxy": ctx.proxy.name, "proxy_settings": ctx.proxy.settings,
             "model": ctx.loaded.fingerprint, **extra}
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def search(ctx: SearchContext, target_ms: float, n_trials: int, sampler: str = "tpe", seed: int | None = 0,
           study_name: str | None = None, progress: bool = False, prune_dominated: bool = True,
           storage=None, stop=None) -> optuna.Study:
    """Single-objective search for the best proxy under `latency <= target_ms`; resumes to n_trials finished
    trials in all. Candidates over the target (or dominated, when pruning) get a positive constraint value, no
    evaluation and no objective value: they end PRUNED, so optuna-dashboard's plots show only real accuracies.
    With pruning, the first trials evaluate the boundary (the deepest feasible subnet of each width)."""
    name = study_name or search_study_name(ctx, target_ms, sampler, prune_dominated)
    first = [{"depth": c.depth, "heads": c.heads, "mlp": c.mlp} for c in boundary(ctx, target_ms)[:n_trials]] \
        if prune_dominated else []
    with storage_errors(ctx.storage_url), quiet_optuna():
        study = optuna.create_study(storage=ctx.storage if storage is None else storage, study_name=name,
                                    direction=ctx.proxy.direction, load_if_exists=True,
                                    sampler=FirstTrialsFixed(make_sampler(sampler, seed), first))
        study.set_metric_names([ctx.proxy.unit])
        describe_study(ctx, study, target_ms=target_ms)

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr("worker", worker_id())
            candidate = suggest(trial, ctx.space)
            latency = ctx.latency_ms(candidate)
            trial.set_user_attr("key", candidate.key)
            trial.set_user_attr("latency_ms", latency)
            pruned = latency <= target_ms and prune_dominated and dominated(ctx, candidate, target_ms)
            # the constraint TPE sees: over the target, or (pruned) a hair over it, so it learns the boundary;
            # target_ms itself stays the user's target on every trial
            trial.set_user_attr("target_ms", target_ms)
            trial.set_user_attr("constraint_ms", target_ms if not pruned else latency - 1e-6)
            trial.set_user_attr("evaluated", latency <= target_ms and not pruned)
            set_latency_constraint(trial, latency - trial.user_attrs["constraint_ms"])
            if not trial.user_attrs["evaluated"]:       # rejected by the predictor: no accuracy evaluation
                raise optuna.TrialPruned()
            return ctx.candidate_accuracy(candidate)

        recover_stale_trials(study, objective)
        remaining = n_trials - len(finished(study))
        if remaining > 0:
            callbacks = [optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)]
            study.optimize(objective, n_trials=remaining, show_progress_bar=progress,
                           callbacks=callbacks + ([stop] if stop else []))
    return study


def pareto(ctx: SearchContext, n_trials: int, sampler: str = "nsga2", seed: int | None = 0,
           study_name: str | None = None, progress: bool = False) -> optuna.Study:
    """Multi-objective search: (proxy, predicted latency); every trial is evaluated (through the cache)."""
    name = study_name or ctx.study_name("pareto", f"/{sampler}")
    with storage_errors(ctx.storage_url), quiet_optuna():
        study = optuna.create_study(storage=ctx.storage, study_name=name, load_if_exists=True,
                                    directions=[ctx.proxy.direction, "minimize"],
                                    sampler=make_sampler(sampler, seed, multi_objective=True))
        study.set_metric_names([ctx.proxy.unit, "latency_ms"])
        describe_study(ctx, study)

        def objective(trial: optuna.Trial) -> tuple[float, float]:
            trial.set_user_attr("worker", worker_id())
            candidate = suggest(trial, ctx.space)
            trial.set_user_attr("key", candidate.key)
            trial.set_user_attr("evaluated", True)
            return ctx.candidate_accuracy(candidate), ctx.latency_ms(candidate)

        recover_stale_trials(study, objective)
        remaining = n_trials - len(finished(study))
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, show_progress_bar=progress)
    return study


def front(points: list[tuple[float, float]], direction: str) -> list[int]:
    """Indices of the non-dominated (accuracy, latency) points, sorted by latency."""
    sign = 1 if direction == "minimize" else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][1], sign * points[i][0]))
    kept, best = [], float("inf")
    for i in order:
        value = sign * points[i][0]
        if value < best:
            kept.append(i)
            best = value
    return kept


def write_csv(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    return write_csv_atomic(path, pd.DataFrame(rows))
