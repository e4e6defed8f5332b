"""What a handed-over model or subnet is worth, in the terms a user checks before deploying it: held-out perplexity
with its split named, multiple-choice acc and acc_norm with standard errors (and a warning when a score is within
noise of guessing), and greedy answers to fixed prompts beside the full model's. The demo, `amoeba search --extract`
and `amoeba evaluate` all report through here, so what they print is the same measurement."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .evaluate import decode_outcomes, near_chance, paired_difference_pct
from .models import LoadedModel
from .profiling.lut import ESTIMATORS, Setting
from .subnet import Subnet
from .tasks import TASKS
from .tasks.base import Task, evaluate_tasks

# (kind, text): "text" is continued as it is; "chat" goes through the model's chat template when it has one.
PROMPTS = (("text", "The capital of France is"), ("text", "Water boils at"),
           ("chat", "Give three tips for staying healthy."))
GENERATION_TOKENS = 32


def render_prompt(tokenizer: PreTrainedTokenizerBase, kind: str, text: str) -> str:
    if kind == "chat" and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


@torch.inference_mode()
def greedy_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts=PROMPTS,
                   max_new_tokens: int = GENERATION_TOKENS) -> list[dict]:
    """Greedy continuations, one prompt at a time (no padding to get wrong): [{prompt, text}]."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples = []
    for kind, text in prompts:
        prompt = render_prompt(tokenizer, kind, text)
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        output = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
        new = output[0, encoded["input_ids"].shape[1]:]                                    # (new,)
        answer = tokenizer.decode(new, skip_special_tokens=True).strip()
        samples.append({"prompt": text, "text": answer or "(no text: the model ended at once)"})
    return samples


def chance_warnings(tasks: dict) -> list[str]:
    """One line per multiple-choice score within 2 standard errors of the chance level."""
    lines = []
    for name, result in tasks.items():
        for metric in ("acc", "acc_norm"):
            if metric in result and near_chance(result, metric):
                lines.append(f"{name} {metric} {result[metric]:.1f} ± {result[f'{metric}_stderr']:.1f} is within 2 "
                             f"standard errors of chance ({result['chance_acc']:.1f}): it says nothing about the model")
    return lines


def held_in_warnings(loaded: LoadedModel, tasks: list[Task]) -> list[str]:
    """One line per scored task whose data file the attached adapters were trained on (their record lists the
    training files): such a score is not held out, and reads better than the subnet is."""
    if loaded.adapters is None:
        return []
    trained_on = [Path(f).as_posix() for f in loaded.adapters.record.get("data", {}).get("files", [])]
    return [f"{task.name}: the adapters were trained on {task.relative_path}, so this score is not held out"
            for task in tasks if any(f == task.relative_path or f.endswith("/" + task.relative_path)
                                     for f in trained_on)]


def quality(loaded: LoadedModel, subnet: Subnet | None, data_dir: Path, tasks: list[Task] | None = None,
            questions: int | None = None, windows: int | None = None, seq_len: int = 512, generate: bool = True,
            progress: bool = False) -> dict:
    """The evaluation record of a model or subnet (through the same view search scored; default tasks WikiText-2
    test and ARC-easy), with chance warnings and, when asked, its greedy samples."""
    tasks = tasks or [TASKS.get("wikitext2"), TASKS.get("arc_easy")]
    record = evaluate_tasks(loaded, tasks, data_dir, subnet=subnet, questions=questions, windows=windows,
                            seq_len=seq_len, progress=progress)
    record["warnings"] = held_in_warnings(loaded, tasks) + chance_warnings(record["tasks"])
    if generate:
        with loaded.view(subnet) as model:
            record["generation"] = greedy_samples(model, loaded.tokenizer)
    return record


def report_row(name: str, loaded: LoadedModel, view: Subnet | None, predicted_ms: float | None, latency: dict,
               data_dir: Path, questions: int | None = None, windows: int | None = None) -> dict:
    """One line of a hand-over report: predicted and measured latency (`latency` from
    profiling.profile.measured_latency, {} when not measured) with the model's quality record."""
    record = quality(loaded, view, data_dir, questions=questions, windows=windows)
    return {"name": name, "path": str(loaded.path), "predicted_ms": predicted_ms,
            "measured_ms": latency.get("measured_ms"), "measured_p10_ms": latency.get("p10_ms"),
            "measured_p90_ms": latency.get("p90_ms"), "measured_estimator": latency.get("estimator"),
            "tasks": record["tasks"], "warnings": record["warnings"],
            "generation": record["generation"],
            "layers": len(view.layers) if view is not None else loaded.model.config.num_hidden_layers}


def metric_cells(name: str, result: dict) -> dict[str, str]:
    """Display strings for one task: its headline value with ± where there is one, acc_norm, and what was scored
    (the data file's split, windows or questions, the chance level)."""
    split = Path(TASKS.get(name).relative_path).stem.rsplit("_", 1)[-1]      # test, validation, val
    if "ppl" in result:
        return {"value": f"{result['ppl']:.2f}", "norm": "",
                "what": f"ppl, {split}, {result['windows']}x{result['seq_len']} tokens"}
    return {"value": f"{result['acc']:.1f} ± {result['acc_stderr']:.1f}",
            "norm": f"{result['acc_norm']:.1f} ± {result['acc_norm_stderr']:.1f}",
            "what": f"acc %, {split}, {result['questions']} q, chance {result['chance_acc']:.0f}"}


def quality_table(rows: list[dict], title: str, setting: Setting) -> Table:
    """Rows of {name, predicted_ms, measured_ms (+ p10/p90), tasks}: one line per model, latency in the setting's
    serving terms (TTFT or TPOT ms, and pp or tg tokens/s: measured where measured, else marked predicted), one
    column per metric (± stderr). The caption names the profile's estimator: "measured" is what the prediction is
    comparable with, and it can sit outside the p10-p90 of all samples (the 'quiet' one is the lowest pass p10)."""
    estimator = next((r["measured_estimator"] for r in rows if r.get("measured_estimator")), None)
    caption = (f"measured = {ESTIMATORS[estimator]} (the profile's estimator, comparable with predicted); "
               "p10-p90 over all samples" if estimator else None)
    table = Table(title=escape(title), caption=escape(caption) if caption else None)
    tasks = list(rows[0]["tasks"])
    cells = [{name: metric_cells(name, r["tasks"][name]) for name in tasks} for r in rows]
    columns = ["model", f"predicted {setting.metric} ms", f"measured {setting.metric} ms (p10-p90)", setting.rate_name]
    for name in tasks:
        what = cells[0][name]["what"]
        columns += [f"{name}: {what}"] + (["acc_norm"] if cells[0][name]["norm"] else [])
    for column in columns:
        table.add_column(escape(column), justify="left" if column == "model" else "right")
    for r, cell in zip(rows, cells):
        values = [r["name"], "" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f}",
                  "" if r["measured_ms"] is None else f"{r['measured_ms']:.2f}" + (
                      f" ({r['measured_p10_ms']:.1f}-{r['measured_p90_ms']:.1f})" if r.get("measured_p10_ms") else ""),
                  f"{setting.tokens_per_s(r['measured_ms']):.1f}" if r["measured_ms"] is not None else
                  f"{setting.tokens_per_s(r['predicted_ms']):.1f} (predicted)" if r["predicted_ms"] is not None else ""]
        for name in tasks:
            values += [cell[name]["value"]] + ([cell[name]["norm"]] if cell[name]["norm"] else [])
        table.add_row(*map(escape, values))
    return table


def paired_lines(rows: list[dict]) -> list[str]:
    """Each row against each earlier one on the same multiple-choice questions: the paired difference of acc ± its
    standard error. Why: whether a subnet lost, or adapters gained, more than noise is what a user reads the table
    for, and two independent ± columns overstate the noise of a difference (evaluate.paired_difference_pct)."""
    lines = []
    for index, later in enumerate(rows):
        for earlier in rows[:index]:
            for name, result in later["tasks"].items():
                before = earlier["tasks"].get(name, {}).get("outcomes")
                if "outcomes" not in result or before is None or len(before) != len(result["outcomes"]):
                    continue
                diff, stderr = paired_difference_pct(decode_outcomes(before), decode_outcomes(result["outcomes"]))
                verdict = ("the same answers" if stderr == 0 and diff == 0 else
                           "within noise" if abs(diff) < 2 * stderr else "beyond 2 standard errors")
                lines.append(f"{later['name']} vs {earlier['name']}: {name} acc {diff:+.1f} ± {stderr:.1f} points "
                             f"({verdict})")
    return lines


def print_samples(console: Console, rows: list[dict]) -> None:
    """Warnings, paired differences, then each prompt's greedy answer per model, side by side: the first thing a
    user would try."""
    for r in rows:
        for line in r["warnings"]:
            console.print(f"[yellow]warning ({escape(r['name'])}):[/] {escape(line)}")
    paired = paired_lines(rows)
    if paired:
        console.print("on the same questions (paired):")
        for line in paired:
            console.print(f"  {escape(line)}", highlight=False)
    console.print(f"greedy answers ({GENERATION_TOKENS} new tokens):")
    for index, sample in enumerate(rows[0]["generation"]):
        console.print(f"  [bold]{escape(sample['prompt'])}[/]")
        for r in rows:
            console.print(f"    {escape(r['name'])}: {escape(repr(r['generation'][index]['text']))}", highlight=False)
