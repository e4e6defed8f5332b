"""`make demo`: the full embedded model beside two extracted subnets, measured for real on this machine."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .artifacts import dir_mib, environment, write_json_atomic
from .data import data_root, read_text
from .extract import extract
from .models import LoadedModel, load_model
from .selection.calibration import text_calibration
from .selection.select import select_depth
from .selection.width import width_subnet
from .subnet import ModelDims, Subnet
from .tasks import TASKS, evaluate_tasks
from .timing import forward_latency
from .view import subnet_view

DEMO_DEPTH = 20
DEMO_MLP_RATIO = 0.75


def _demo_subnets(full: LoadedModel, root: Path) -> list[tuple[str, Subnet]]:
    """Selected in seconds: ShortGPT block influence for depth, FLAP (+ bias compensation) for width, on 8 x 256
    WikiText-2 valid tokens. `amoeba select` runs the DP instead (better, ~16 min here)."""
    dims = ModelDims.from_config(full.model.config)
    calibration = text_calibration(full.tokenizer, read_text(root / "wikitext2" / "valid.txt"), samples=8,
                                   seq_len=256, name="wikitext2/valid.txt")
    strategy = select_depth(full, calibration, "shortgpt", dims.num_layers - DEMO_DEPTH, keep_last=1,
                            progress=False, width_method="flap")
    return [
        ("full", Subnet.full(dims)),
        (f"depth-{DEMO_DEPTH}of{dims.num_layers}-shortgpt", Subnet.uniform(dims, strategy.layers_for(DEMO_DEPTH))),
        (f"mlp-{round(100 * DEMO_MLP_RATIO)}pct-flap",
         width_subnet(full.model, strategy.width, list(range(dims.num_layers)), mlp=DEMO_MLP_RATIO)),
    ]


@torch.inference_mode()
def _view_vs_extracted(full: LoadedModel, subnet: Subnet, extracted: LoadedModel) -> float:
    """Max |logit difference| between the in-place view and the extracted checkpoint on a short prompt."""
    ids = full.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with subnet_view(full.model, subnet):
        expected = full.model(input_ids=ids).logits
    return (extracted.model(input_ids=ids).logits - expected).abs().max().item()


def run_demo(console: Console, full: LoadedModel, out: Path, limit: int, windows: int,
             data_dir: Path | None = None) -> dict:
    """Extract each demo subnet, reload it with plain transformers, and measure size, latency and accuracy."""
    root = data_root(data_dir)
    dims = ModelDims.from_config(full.model.config)
    tasks = [TASKS.get("wikitext2"), TASKS.get("arc_easy")]
    rows = []
    with console.status("selecting subnets (ShortGPT depth, FLAP width) on calibration data"):
        subnets = _demo_subnets(full, root)
    for name, subnet in subnets:
        console.rule(f"{name}: {subnet.summary(dims)}", style="dim")
        if subnet.is_full(dims):
            model, max_diff = full, 0.0
        else:
            path = extract(full, subnet, out / name, overwrite=True)
            model = load_model(str(path))
            max_diff = _view_vs_extracted(full, subnet, model)
        latency = forward_latency(model.model, tokens=128, repeats=10)
        # Perplexity uses `windows` windows, MC uses `limit` questions; evaluate_tasks takes one limit, so run twice.
        ppl = evaluate_tasks(model, tasks[:1], root, limit=windows)["tasks"]["wikitext2"]
        arc = evaluate_tasks(model, tasks[1:], root, limit=limit)["tasks"]["arc_easy"]
        rows.append({"name": name, "subnet": subnet.summary(dims), "path": str(model.path),
                     "params_m": sum(p.numel() for p in model.model.parameters()) / 1e6,
                     "disk_mib": dir_mib(model.path), "forward_128_tokens": latency,
                     "view_vs_extracted_max_abs_logit_diff": max_diff,
                     "wikitext2_test_ppl": ppl["ppl"], "ppl_windows": ppl["windows"],
                     "arc_easy_acc_pct": arc["acc"], "arc_easy_acc_norm_pct": arc["acc_norm"],
                     "arc_easy_questions": arc["questions"]})
    record = {"kind": "amoeba_search.demo", "model": full.fingerprint, "environment": environment(), "rows": rows}
    write_json_atomic(out / "demo.json", record)
    console.print(_demo_table(rows, windows, limit))
    console.print("max |Δlogit| compares the extracted checkpoint with the in-place view of the full model.\n"
                  "Subnets are selected in seconds (ShortGPT depth, FLAP width) and not fine-tuned; `amoeba select` "
                  f"runs the DP depth selection instead. Record: {out / 'demo.json'}")
    return record


def _demo_table(rows: list[dict], windows: int, limit: int) -> Table:
    table = Table(title="amoeba_search demo: SmolLM2-135M-Instruct (fp32) and two selected, extracted subnets")
    for column in ("subnet", "params M", "disk MiB", "fwd 128 tok ms (p10-p90)",
                   f"ppl ({windows}x512)", f"ARC-e acc % ({limit}q)", "max |Δlogit|"):
        table.add_column(column, justify="left" if column == "subnet" else "right")
    for r in rows:
        lat = r["forward_128_tokens"]
        table.add_row(f"{r['name']} ({r['subnet']})", f"{r['params_m']:.1f}", f"{r['disk_mib']:.0f}",
                      f"{lat['median_ms']:.1f} ({lat['p10_ms']:.1f}-{lat['p90_ms']:.1f})",
                      f"{r['wikitext2_test_ppl']:.1f}", f"{r['arc_easy_acc_pct']:.1f}",
                      f"{r['view_vs_extracted_max_abs_logit_diff']:.1e}")
    return table
