"""What a search produces: the best subnet file with its search record, the check of that subnet after
extraction (real latency on this machine, held-out quality and greedy answers), and the rows of a Pareto CSV with baselines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from ..artifacts import read_json, write_json_atomic
from ..errors import UserError
from ..profiling.environment import device_name
from ..profiling.flows import FLOWS
from ..profiling.lut import ESTIMATORS
from ..subnet import Subnet
from ..selection.space import Candidate
from .study import SearchContext, finished, front


def candidate_of(trial: optuna.trial.FrozenTrial) -> Candidate:
    return Candidate(trial.params["depth"], trial.params["heads"], trial.params["mlp"])


def best_record(ctx: SearchContext, study: optuna.Study, best: optuna.trial.FrozenTrial, target_ms: float) -> dict:
    candidate = candidate_of(best)
    return {"candidate": candidate.key, "depth": candidate.depth, "heads": candidate.heads, "mlp": candidate.mlp,
            "layers": ctx.strategy.layers_for(candidate.depth), "device": ctx.lut.meta["device"],
            "flow": ctx.lut.meta["flow"], "profile_source": ctx.lut.meta["source"], "setting": ctx.setting.label(),
            "predicted_ms": best.user_attrs["latency_ms"], "metric": ctx.setting.metric,
            "predicted_tokens_per_s": ctx.setting.tokens_per_s(best.user_attrs["latency_ms"]), "latency_corrected": ctx.predictor.is_corrected(ctx.setting),
            "target_ms": target_ms, "full_model_ms": ctx.full_model_ms(), "proxy": ctx.proxy.name,
            "proxy_settings": ctx.proxy.settings, "direction": ctx.proxy.direction, "proxy_value": best.value,
            "trials": len(finished(study)), "accuracy_evaluations": ctx.cache.evaluations,
            "study": study.study_name, "storage": ctx.storage_url, "space_size": ctx.space.size,
            "adapters": None if ctx.loaded.adapters is None else ctx.loaded.adapters.describe()}


def write_best(ctx: SearchContext, record: dict, out: Path, subnet: Subnet | None = None) -> Path:
    """The best subnet as a normal subnet file (extract/evaluate/predict take it) plus its search record; a
    uniform record's subnet is rebuilt from its candidate, a heterogeneous one is passed in."""
    if subnet is None:
        subnet = ctx.subnet(Candidate(record["depth"], record["heads"], record["mlp"]))
    payload = subnet.to_dict(ctx.loaded.fingerprint)
    payload["search"] = record
    return write_json_atomic(out, payload)


def is_this_machine(ctx: SearchContext) -> bool:
    meta = ctx.lut.meta
    if meta.get("source") != "measured":
        return False
    flow = FLOWS.get(meta["flow"])
    return flow.unavailable() is None and meta["environment"].get("device_name") == device_name(flow.device)


def verify(ctx: SearchContext, best_path: Path, extract_dir: Path, data_dir, windows: int = 20,
           questions: int | None = None, passes: int = 3, strict: bool = False) -> dict:
    """Extract the best subnet (adapters merged when attached) and check what the user gets: the checkpoint loaded
    back from disk, beside the original full model. On the profiled machine, real latency like the profiler's
    (median of passes); for both, WikiText-2 *test* perplexity, ARC-easy acc / acc_norm with standard errors and
    greedy answers to the fixed prompts."""
    from ..data import data_root
    from ..extract import extract
    from ..models import load_model
    from ..handover import measure_handover

    record = read_json(best_path, "best subnet", "run `amoeba search`")["search"]
    subnet = Subnet.load(best_path, ctx.dims, ctx.loaded.fingerprint)
    extract(ctx.loaded, subnet, extract_dir, overwrite=True)
    handed_over = load_model(str(extract_dir))
    root = data_root(data_dir)
    measure = is_this_machine(ctx)
    full = dataclasses.replace(ctx.loaded, adapters=None)          # the original model, what users compare with
    models = [("full model", full, None, ctx.full_model_ms()),
              (f"{record['candidate']} extracted" + (", adapters merged" if ctx.loaded.adapters else ""),
               handed_over, None, record["predicted_ms"])]
    rows, load = measure_handover(models, ctx.lut, ctx.setting, root, questions, windows, passes, timed=measure,
                                  strict=strict)
    result = {"subnet": record["candidate"], "checkpoint": str(extract_dir), "predicted_ms": record["predicted_ms"],
              "rows": rows, "load_warnings": load}
    small = rows[1]
    result.update(heldout_metric=f"wikitext2_test_ppl ({windows} x 512 windows)",
                  heldout_value=small["tasks"]["wikitext2"]["ppl"], full_heldout_value=rows[0]["tasks"]["wikitext2"]["ppl"])
    if measure:
        result["measured_ms"], result["full_measured_ms"] = small["measured_ms"], rows[0]["measured_ms"]
        result["error_pct"] = 100 * (small["predicted_ms"] - small["measured_ms"]) / small["measured_ms"]
        result["measured_tokens_per_s"] = ctx.setting.tokens_per_s(small["measured_ms"])
        how = "" if ctx.lut.estimator == "median" else f" ({ESTIMATORS[ctx.lut.estimator]}, as the profile)"
        latency = (f"predicted {small['predicted_ms']:.2f} ms, measured{how} "
                   f"{ctx.setting.describe(small['measured_ms'], 2)}"
                   f" ({result['error_pct']:+.1f}%; full model measured {rows[0]['measured_ms']:.2f} ms)")
    else:
        latency = (f"predicted {ctx.setting.describe(small['predicted_ms'], 2)} (profile is not this machine's: not "
                   "measured here)")
    result["summary"] = f"extracted {record['candidate']} to {extract_dir}: {latency}"
    return result


def pareto_rows(ctx: SearchContext, study: optuna.Study, baselines: bool = True, progress: bool = False,
                heterogeneous: tuple[float, ...] = ()) -> list[dict]:
    """Every trial, the non-dominated ones as the front, baseline subnets, and (at each `heterogeneous` latency
    ratio) the best heterogeneous subnet, with what the plot needs."""
    common = {"device": ctx.lut.meta["device"], "flow": ctx.lut.meta["flow"], "source": ctx.lut.meta["source"],
              "setting": ctx.setting.label(), "metric": ctx.setting.metric, "proxy": ctx.proxy.name,
              "proxy_unit": ctx.proxy.unit,
              "direction": ctx.proxy.direction, "full_model_ms": ctx.full_model_ms(),
              "proxy_detail": proxy_detail(ctx.proxy.settings)}
    trials = {t.user_attrs["key"]: t for t in finished(study)}          # one row per distinct subnet
    points = [(t.values[0], t.values[1]) for t in trials.values()]
    on_front = set(front(points, ctx.proxy.direction))
    rows = []
    for i, trial in enumerate(trials.values()):
        c = candidate_of(trial)
        row = {**common, "key": c.key, "depth": c.depth, "heads": c.heads, "mlp": c.mlp,
               "latency_ms": trial.values[1], "value": trial.values[0]}
        rows.append({**row, "series": "search trials"})
        if i in on_front:
            rows.append({**row, "series": "search front"})
    if baselines:
        rows += baseline_rows(ctx, common, progress)
    for ratio in tqdm(heterogeneous, desc="heterogeneous (exact)", unit="target",
                      disable=not progress or not heterogeneous):
        rows += heterogeneous_rows(ctx, common, ratio)
    return [{**row, "tokens_per_s": ctx.setting.tokens_per_s(row["latency_ms"])} for row in rows]


def heterogeneous_rows(ctx: SearchContext, common: dict, ratio: float, top_k: int = 4) -> list[dict]:
    """The best heterogeneous subnet at `ratio` of the full model's predicted latency (none below the fastest)."""
    from ..plot import HETERO_SERIES
    from .heterogeneous import heterogeneous_search

    try:
        found = heterogeneous_search(ctx, ratio * ctx.full_model_ms(), top_k)
    except UserError as exc:
        if "below the fastest" in str(exc):
            return []
        raise
    return [{**common, "series": HETERO_SERIES, "key": found["key"], "depth": len(found["subnet"].layers),
             "heads": None, "mlp": None, "latency_ms": found["predicted_ms"], "value": found["proxy_value"]}]


def proxy_detail(settings: dict) -> str:
    """'wikitext2/valid.txt, 8 x 256 tokens' from a proxy's settings: what the accuracy axis measured."""
    parts = [str(settings.get("data", ""))]
    if "samples" in settings and "seq_len" in settings:
        parts.append(f"{settings['samples']} x {settings['seq_len']} tokens")
    elif "samples" in settings:
        parts.append(f"{settings['samples']} questions")
    return ", ".join(p for p in parts if p)


def baseline_rows(ctx: SearchContext, common: dict, progress: bool = False) -> list[dict]:
    """Depth only (DP layers, full width), width only (all layers, FLAP widths) and drop-last-k (first N layers)."""
    d, space = ctx.dims, ctx.space
    full = (d.num_heads, d.intermediate_size)
    series = [("depth only (DP)", Candidate(depth, *full), None) for depth in space.depths]
    if d.num_layers in ctx.strategy.depths():
        series += [("width only (FLAP)", Candidate(d.num_layers, h, m), None) for h in space.heads for m in space.mlp
                   if (h, m) != full]
    series += [("drop-last-k", Candidate(depth, *full), f"droplast-d{depth}") for depth in space.depths]
    rows = []
    for name, candidate, key in tqdm(series, desc="baselines (cached ones are instant)", unit="subnet",
                                     disable=not progress):
        subnet_of = (lambda c=candidate: ctx.subnet(c)) if key is None else (
            lambda c=candidate: Subnet.uniform(d, range(c.depth)))
        value = ctx.accuracy(key or candidate.key, subnet_of)
        rows.append({**common, "series": name, "key": key or candidate.key, "depth": candidate.depth,
                     "heads": candidate.heads, "mlp": candidate.mlp, "latency_ms": ctx.latency_ms(candidate),
                     "value": value})
    return rows
