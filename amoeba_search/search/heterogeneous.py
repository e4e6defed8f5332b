"""Heterogeneous subnets: a shape per layer, found exactly under a latency budget.

Predicted latency is base + sum of per-layer block latencies (lookup table, optionally scaled by the profile's
correction), and replace-one-block scores are additive estimates of the damage, so the best subnet under a budget
is a multiple-choice knapsack: pick one variant per layer (removed, or heads x MLP width) minimising the summed
score subject to the latency sum. Solved exactly as a MILP (scipy / HiGHS, zero gap). Block scores interact, so
what is handed over is chosen by the accuracy proxy measured on real subnets, from a pool: the exact top-k (no-good
cuts), the exact per-layer widths on the DP's removal set of every depth, and the uniform subnets at the budget;
optionally refined by rounds of local search (scores re-taken around the incumbent, a few layers changed at once)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from tqdm.auto import tqdm

from ..data import data_root, read_text
from ..errors import UserError
from ..profiling.predictor import setting_key
from ..selection.blocks import REMOVED, Shape, neighbours, scores_around, shapes_key
from ..selection.calibration import Calibration, text_calibration
from ..selection.space import Candidate
from ..selection.width import heterogeneous_subnet
from ..subnet import Subnet


@dataclass(frozen=True)
class Solution:
    shapes: tuple[Shape, ...]                    # one per original layer
    score: float                                 # summed block score (lower is better)
    blocks_ms: float                             # summed block latency (before any correction)

    @property
    def key(self) -> str:
        return shapes_key(self.shapes)


def block_budget_ms(target_ms: float, base_ms: float, block_scale: float = 1.0, base_scale: float = 1.0) -> float:
    """The summed block latency a target leaves: predicted = block_scale * sum(blocks) + base_scale * base."""
    return (target_ms - base_scale * base_ms) / block_scale


def latency_scales(ctx) -> tuple[float, float]:
    """(block_scale, base_scale) of the profile's correction for the search's setting; (1, 1) without one."""
    correction = ctx.predictor.corrections.get(setting_key(ctx.setting)) if ctx.use_correction else None
    return (correction.block_scale, correction.base_scale) if correction else (1.0, 1.0)


def solve(scores: Sequence[dict[Shape, float]], block_ms: dict[Shape, float], budget_ms: float, top_k: int = 1,
          min_layers: int = 1, anchor: Sequence[Shape] | None = None, max_changes: int | None = None
          ) -> list[Solution]:
    """The top_k lowest summed scores with summed block latency <= budget_ms (removed layers cost 0), exactly;
    fewer when fewer exist. Variants a layer has no score for, or the profile no latency for, are not offered.
    With `anchor` and `max_changes`: at most that many layers differ from the anchor's shapes (a trust region for
    scores that are only valid near the anchor). The single best without a trust region comes from the Pareto
    DP (`pareto_optimum`); the rest from the MILP with no-good cuts."""
    if top_k == 1 and anchor is None and min_layers == 1:
        best = pareto_optimum(scores, block_ms, budget_ms)
        return [best] if best is not None else []
    options = [[(v, s) for v, s in layer.items() if v == REMOVED or v in block_ms] for layer in scores]
    index = [(i, v) for i, layer in enumerate(options) for v, _ in layer]
    cost = np.array([s for layer in options for _, s in layer], dtype=float)
    latency = np.array([0.0 if v == REMOVED else block_ms[v] for _, v in index])
    kept = np.array([0.0 if v == REMOVED else 1.0 for _, v in index])
    one_per_layer = np.zeros((len(options), len(index)))
    for column, (i, _) in enumerate(index):
        one_per_layer[i, column] = 1.0
    constraints = [LinearConstraint(one_per_layer, 1, 1), LinearConstraint(latency[None], -np.inf, budget_ms),
                   LinearConstraint(kept[None], min_layers, np.inf)]
    if anchor is not None and max_changes is not None:
        changed = np.array([0.0 if v == tuple(anchor[i]) else 1.0 for i, v in index])
        constraints.append(LinearConstraint(changed[None], -np.inf, max_changes))
    found: list[Solution] = []
    for _ in range(top_k):
        with _quiet_stdout():
            result = milp(cost, integrality=np.ones(len(index)), bounds=Bounds(0, 1), constraints=constraints,
                          options={"mip_rel_gap": 0.0})
        if result.status != 0 or result.x is None:
            break
        chosen = [column for column in range(len(index)) if result.x[column] > 0.5]
        shapes = [REMOVED] * len(options)
        for column in chosen:
            shapes[index[column][0]] = index[column][1]
        found.append(Solution(tuple(shapes), float(cost[chosen].sum()), float(latency[chosen].sum())))
        cut = np.zeros(len(index))
        cut[chosen] = 1.0                                  # no-good cut: not this exact choice again
        constraints.append(LinearConstraint(cut[None], -np.inf, len(options) - 1))
    return found


def pareto_optimum(scores: Sequence[dict[Shape, float]], block_ms: dict[Shape, float], budget_ms: float
                   ) -> Solution | None:
    """The lowest summed score with summed block latency <= budget_ms and at least one layer kept, exactly, by
    dynamic programming over layers on Pareto frontiers: after each layer only the partial choices that no other
    beats on both latency and score survive (Nemhauser-Ullmann). Why beside the MILP: block latencies from a
    linear profile fit lie on a plane, so many choices tie on latency and HiGHS needs seconds to prove optimality,
    while the frontiers stay small (measured in benchmarks/results/heterogeneous.md). State: (kept any, latency,
    score), a frontier per `kept any` so the all-removed choice never shadows a valid one."""
    frontiers = {False: (np.zeros(1), np.zeros(1)), True: (np.zeros(0), np.zeros(0))}   # latency, score
    parents: list[dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []          # (from kept, from index, v)
    for layer in scores:
        options = [(v, s) for v, s in layer.items() if v == REMOVED or v in block_ms]
        candidates = {False: [], True: []}
        for kept, (latency, score) in frontiers.items():
            for number, (v, s) in enumerate(options):
                lands = kept or v != REMOVED
                added = 0.0 if v == REMOVED else block_ms[v]
                fits = latency + added <= budget_ms + 1e-9
                candidates[lands].append((latency[fits] + added, score[fits] + s, np.full(fits.sum(), kept),
                                          np.flatnonzero(fits), np.full(fits.sum(), number)))
        step = {}
        for lands, parts in candidates.items():
            latency, score, from_kept, from_index, chosen = (np.concatenate([p[j] for p in parts]) if parts else
                                                             np.zeros(0) for j in range(5))
            order = np.lexsort((score, latency))                    # by latency, then score
            latency, score = latency[order], score[order]
            best_before = np.minimum.accumulate(np.concatenate([[np.inf], score]))[:-1]
            keep = score < best_before - 1e-12                      # better than every faster-or-equal choice
            frontiers[lands] = (latency[keep], score[keep])
            step[lands] = (from_kept[order][keep].astype(bool), from_index[order][keep].astype(int),
                           chosen[order][keep].astype(int))
        parents.append((step, options))
    latency, score = frontiers[True]
    if not len(score):
        return None
    index, kept, shapes = int(np.argmin(score)), True, []
    total_score, total_ms = float(score[index]), float(latency[index])
    for step, options in reversed(parents):
        from_kept, from_index, chosen = step[kept]
        shapes.append(options[chosen[index]][0])
        kept, index = bool(from_kept[index]), int(from_index[index])
    return Solution(tuple(reversed(shapes)), total_score, total_ms)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints internal diagnostics straight to file descriptor 1 on some solves: keep them out of reports."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def brute_force(scores: Sequence[dict[Shape, float]], block_ms: dict[Shape, float], budget_ms: float,
                min_layers: int = 1) -> Solution | None:
    """The optimum by enumeration (tests and the benchmark's check; exponential in the layer count)."""
    best = None
    options = [[v for v in layer if v == REMOVED or v in block_ms] for layer in scores]
    for shapes in itertools.product(*options):
        ms = sum(0.0 if v == REMOVED else block_ms[v] for v in shapes)
        if ms > budget_ms + 1e-9 or sum(v != REMOVED for v in shapes) < min_layers:
            continue
        score = sum(layer[v] for layer, v in zip(scores, shapes))
        if best is None or score < best.score - 1e-12:
            best = Solution(tuple(shapes), score, ms)
    return best


def adapters_warning(loaded) -> str | None:
    """Why attached adapters may hurt on per-layer shapes: trained on uniform shapes only, they measured worse."""
    if loaded.adapters is None or loaded.adapters.saw_heterogeneous:
        return None
    return ("these adapters were trained on uniform shapes only (finetune --heterogeneous-per-step 0); on "
            "heterogeneous subnets the shipped ones measured a worse test perplexity than none "
            "(benchmarks/results/recovery.md): compare with --adapters none")


def heterogeneous_search(ctx, target_ms: float, top_k: int = 8, metric: str = "kl", refine_rounds: int = 0,
                         max_changes: int = 4, progress: bool = False) -> dict:
    """The best heterogeneous subnet for a search context (model, strategy with block scores, profile, proxy):
    exact top-k under the budget and the rest of `candidate_pool`, re-ranked by the proxy measured on each real
    subnet (cached in the study storage like every other accuracy); then up to `refine_rounds` rounds of `refine`
    from the best. Returns the record `best.json` holds."""
    blocks = ctx.strategy.blocks
    if blocks is None:
        raise UserError("the strategy has no block scores, which --space heterogeneous needs: add them with "
                        "`amoeba blocks --strategy STRATEGY --out STRATEGY2` and search with --strategy STRATEGY2")
    if blocks.compensate != ctx.compensate:
        raise UserError(f"the block scores were computed with compensation {'on' if blocks.compensate else 'off'}: "
                        f"search with the same --{'no-' if not blocks.compensate else ''}compensate, or recompute them")
    dims, setting = ctx.dims, ctx.setting
    scores = blocks.table(metric, dims.num_layers)              # every variant's score, for the uniform candidates
    table = solver_table(scores)
    profiled = set(ctx.lut.widths(setting))
    block_ms = {(h, m): ctx.lut.block_ms(setting, h, m) for h, m in profiled}
    unprofiled = sorted({v for layer in table for v in layer if v != REMOVED and v not in profiled})
    if unprofiled:
        raise UserError(f"profile {ctx.lut.name} has no {setting.label()} latency for block variants "
                        f"{unprofiled[:4]}{'...' if len(unprofiled) > 4 else ''} (heads, MLP) that the block scores "
                        f"offer (heads 0 = MLP-only layers): profile them (`amoeba profile --device "
                        f"{ctx.lut.meta['device']} --flow {ctx.lut.meta['flow']} --mlp-only-layers --mlp-widths ...`) "
                        "or recompute the scores with `amoeba blocks` matching the profile (--mlp-ratios, --heads, "
                        "--no-mlp-only-layers)")
    base_ms = ctx.lut.base_ms(setting)
    scales = latency_scales(ctx)
    budget = block_budget_ms(target_ms, base_ms, *scales)
    started = time.perf_counter()
    solutions = solve(table, block_ms, budget, top_k)
    seconds = time.perf_counter() - started
    if not solutions:
        fastest = base_ms * scales[1] + scales[0] * min(block_ms.values())
        raise UserError(f"latency target {target_ms:.3f} ms is below the fastest heterogeneous subnet "
                        f"({fastest:.3f} ms: one layer at the narrowest profiled width on {ctx.lut.name}): raise it")
    calibration = block_calibration(ctx) if refine_rounds else None      # refused before any proxy is measured
    ranked = []

    def measure(entries: list[tuple[str, Solution, str]]) -> tuple:
        """Score new entries on the proxy; the best of all so far."""
        for origin, solution, key in tqdm(entries, desc=f"{ctx.proxy.name} of the candidates", unit="subnet",
                                          disable=not progress):
            subnet = heterogeneous_subnet(ctx.loaded.model, ctx.strategy.width, solution.shapes, ctx.compensate)
            ranked.append((origin, solution, subnet, ctx.accuracy(key, lambda s=subnet: s)))
        return min(ranked, key=lambda r: r[3] if ctx.proxy.direction == "minimize" else -r[3])

    best_entry = measure(candidate_pool(ctx, table, scores, block_ms, budget, target_ms, solutions))
    if refine_rounds:
        variants = [v for v in blocks.variants if v == REMOVED or v in block_ms]
        for round_index in range(1, refine_rounds + 1):
            moves = refine(ctx, calibration, best_entry[1].shapes, variants, block_ms, budget, metric, top_k,
                           max_changes, progress)
            seen = {entry[1].shapes for entry in ranked}
            fresh = [(f"refined, round {round_index}", Solution(m.shapes, sum(layer[v] for layer, v in
                                                                            zip(scores, m.shapes)), m.blocks_ms),
                      m.key) for m in moves if m.shapes not in seen]
            improved = measure(fresh)
            if improved is best_entry:
                break                                     # no local move beats the incumbent on the proxy
            best_entry = improved
    origin, best, subnet, value = best_entry
    predicted = ctx.predictor.predict_subnet_ms(setting, subnet, dims)
    return {"space": "heterogeneous", "subnet": subnet, "candidate": f"hetero-{len(subnet.layers)}L", "key": best.key,
            "shapes": [list(s) for s in best.shapes], "device": ctx.lut.meta["device"], "flow": ctx.lut.meta["flow"],
            "profile_source": ctx.lut.meta["source"], "setting": setting.label(), "predicted_ms": predicted,
            "latency_corrected": ctx.predictor.is_corrected(setting), "full_model_ms": ctx.full_model_ms(),
            "target_ms": target_ms, "proxy": ctx.proxy.name, "proxy_settings": ctx.proxy.settings,
            "direction": ctx.proxy.direction, "proxy_value": value, "metric": metric,
            "adapters": None if ctx.loaded.adapters is None else ctx.loaded.adapters.describe(),
            "block_score": best.score, "origin": origin, "solver_seconds": round(seconds, 4),
            "top_k": len(solutions), "refine_rounds": refine_rounds, "max_changes": max_changes,
            "candidates": [{"origin": o, "key": s.key, "block_score": s.score, "proxy_value": v,
                            "predicted_ms": ctx.predictor.predict_subnet_ms(setting, sub, dims)}
                           for o, s, sub, v in ranked]}


def solver_table(scores: list[dict[Shape, float]]) -> list[dict[Shape, float]]:
    """The variants the solver may pick per layer: all scored ones, except that layer 0 keeps its attention
    (neither removed nor MLP-only): llama.cpp reads the head size from the first layer, and removing the first
    layer is ruinous anyway (every DP here keeps it)."""
    return [{v: s for v, s in layer.items() if index or v[0] > 0} for index, layer in enumerate(scores)]


def solver_shapes(blocks, num_layers: int, full_shape: Shape, profiles: Sequence, ratios: Sequence[float],
                  metric: str = "kl") -> list[tuple[Shape, ...]]:
    """The exact block-score optimum (`pareto_optimum`) at each ratio of the full model's predicted latency, for
    every setting of every profile, without repeats: the shapes `search --space heterogeneous` starts from on
    those devices and flows (what the proxy re-ranks and refines lies close to them). Why: fine-tuning on these,
    not on uniformly random per-layer shapes (measured far harsher), trains adapters on what users deploy.
    Profiles whose setting has no block of the full shape are skipped; variants a profile lacks are not offered."""
    table = solver_table(blocks.table(metric, num_layers))
    found: dict[tuple[Shape, ...], None] = {}
    for lut in profiles:
        for setting in lut.settings():
            block_ms = {(h, m): lut.block_ms(setting, h, m) for h, m in lut.widths(setting)}
            if full_shape not in block_ms:
                continue
            base_ms = lut.base_ms(setting)
            full_ms = base_ms + len(table) * block_ms[full_shape]
            for ratio in ratios:
                best = pareto_optimum(table, block_ms, block_budget_ms(ratio * full_ms, base_ms))
                if best is not None:
                    found.setdefault(best.shapes, None)
    return list(found)


def refine(ctx, calibration, shapes: Sequence[Shape], variants: Sequence[Shape], block_ms: dict, budget_ms: float,
           metric: str, top_k: int, max_changes: int, progress: bool = False) -> list[Solution]:
    """One round of local search from an incumbent: replace-one-block scores taken around it (not around the full
    model: they interact less near the answer) for each layer's neighbouring variants (`neighbours`), then the
    exact top-k of at most `max_changes` layer changes under the same budget. Each scored variant costs one pass
    over the layers from it on plus the LM head (about 1 s for SmolLM2 on 2048 tokens on a 2-core CPU; ~200 per
    round for 30 layers)."""
    local = scores_around(ctx.loaded, ctx.strategy.width, calibration, shapes,
                          [neighbours(shape, variants) for shape in shapes], metric, ctx.compensate, progress)
    # Layer 0 keeps attention, as in the caller (or stays removed where the incumbent removed it).
    local[0] = {v: s for v, s in local[0].items() if v[0] > 0 or v == tuple(shapes[0])}
    return solve(local, block_ms, budget_ms, top_k, anchor=shapes, max_changes=max_changes)


def block_calibration(ctx) -> Calibration:
    """The calibration windows the strategy's block scores were computed on, drawn again from its record (the text
    file as recorded, else the same file under this machine's data root)."""
    record = ctx.strategy.blocks.calibration
    recorded = Path(str(record.get("data", "")))
    path = recorded if recorded.is_file() else data_root(ctx.request.data_dir) / recorded.parent.name / recorded.name
    if record.get("metric") != "ppl" or not path.is_file():
        raise UserError(f"refining needs the block scores' calibration text {recorded} (metric ppl): it is not here "
                        "nor under the data root; pass --data-dir, or search with --refine-rounds 0")
    return text_calibration(ctx.loaded.tokenizer, read_text(path), int(record["samples"]), int(record["seq_len"]),
                            int(record["seed"]), name=str(recorded))


def candidate_pool(ctx, table: list[dict], scores: list[dict], block_ms: dict, budget_ms: float, target_ms: float,
                   solutions: list[Solution]) -> list[tuple[str, Solution, str]]:
    """What the proxy re-ranks. Replace-one-block scores add up badly over many changes (measured: the free
    optimum's summed KL keeps falling as more layers are kept narrower, its real perplexity rises), so beside the
    free exact top-k: for every depth of the strategy, the exact best per-layer widths with the DP's removal set
    (which measured how removals interact), and the uniform subnets of the space at the deepest depth each width
    affords (`scores`: unrestricted, as a uniform subnet may drop layer 0). The result is never worse on the proxy
    than the uniform search's space allows. Entries are (origin, solution, accuracy-cache key); a uniform subnet
    keeps the uniform search's key, so its accuracy is measured once for both spaces."""
    pool = [("exact", s, s.key) for s in solutions]
    for depth in ctx.strategy.depths():
        kept = set(ctx.strategy.layers_for(depth))
        fixed = [{v: s for v, s in layer.items() if (v == REMOVED) == (i not in kept)} for i, layer in enumerate(table)]
        pool += [(f"exact, DP layers of depth {depth}", s, s.key) for s in solve(fixed, block_ms, budget_ms, 1)]
    for heads in ctx.space.heads:
        for mlp in ctx.space.mlp:
            feasible = [d for d in ctx.space.depths if ctx.latency_ms(Candidate(d, heads, mlp)) <= target_ms]
            if feasible:
                candidate = Candidate(max(feasible), heads, mlp)
                shapes = tuple(shapes_of(ctx.subnet(candidate), len(table)))
                score = sum(layer[v] for layer, v in zip(scores, shapes))
                pool.append((f"uniform {candidate.key}",
                             Solution(shapes, score, sum(block_ms[v] for v in shapes if v != REMOVED)), candidate.key))
    unique: dict[tuple, tuple[str, Solution, str]] = {}
    for entry in pool:
        unique.setdefault(entry[1].shapes, entry)
    return list(unique.values())


def shapes_of(subnet: Subnet, num_layers: int) -> list[Shape]:
    """Per original layer (heads, channels), (0, 0) where removed: the inverse of heterogeneous_subnet's input."""
    shapes = [REMOVED] * num_layers
    for layer, heads, channels in zip(subnet.layers, subnet.heads, subnet.mlp_channels):
        shapes[layer] = (len(heads), len(channels))
    return shapes

