"""Evaluation tasks registry: each task names its data file and how it is scored, so adding one is one entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .artifacts import SCHEMA_VERSION, environment
from .data import MCItem, read_arc, read_mmlu, read_text, require_file
from .evaluate import multiple_choice, perplexity
from .models import LoadedModel
from .registry import Registry
from .subnet import ModelDims, Subnet


@dataclass(frozen=True)
class Task:
    """A scored dataset: a path under the data root, and either a text (perplexity) or an MC reader."""

    name: str
    relative_path: str
    headline: str                                   # the metric shown in tables, e.g. "ppl" or "acc"
    read_items: Callable[[Path], list[MCItem]] | None = None  # None: perplexity over the text

    def run(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data_dir: Path,
            limit: int | None = None, seq_len: int = 512, progress: bool = True) -> dict:
        """Score the task; `limit` caps windows (perplexity) or questions (first N, as lm-eval's --limit)."""
        path = require_file(data_dir / self.relative_path, self.name)
        if self.read_items is None:
            return perplexity(model, tokenizer, read_text(path), seq_len=seq_len, max_windows=limit,
                              progress=progress)
        items = self.read_items(path)[:limit]
        result = multiple_choice(model, tokenizer, items, progress=progress)
        result.pop("loglikelihoods")
        return result


TASKS: Registry[Task] = Registry("task")

for _task in (
    Task("wikitext2", "wikitext2/test.txt", "ppl"),
    Task("wikitext2_valid", "wikitext2/valid.txt", "ppl"),
    Task("arc_easy", "arc/arc_easy_validation.jsonl", "acc", read_arc),
    Task("arc_challenge", "arc/arc_challenge_validation.jsonl", "acc", read_arc),
    Task("mmlu", "mmlu/zero_shot_val.jsonl", "acc", read_mmlu),
):
    TASKS.register(_task.name)(_task)


def parse_tasks(spec: str) -> list[Task]:
    """'wikitext2,arc_easy' -> tasks; unknown names fail with the list of known ones."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    return [TASKS.get(name) for name in names]


def evaluate_tasks(loaded: LoadedModel, tasks: list[Task], data_dir: Path, subnet: Subnet | None = None,
                   limit: int | None = None, seq_len: int = 512, progress: bool = True) -> dict:
    """Score a model (or a subnet of it, through the in-place view) on tasks; the record is the JSON artifact."""
    dims = ModelDims.from_config(loaded.model.config)
    results = {}
    with loaded.view(subnet) as model:
        for task in tasks:
            results[task.name] = task.run(model, loaded.tokenizer, data_dir, limit=limit, seq_len=seq_len,
                                          progress=progress)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "amoeba_search.evaluation",
        "model": loaded.fingerprint,
        "model_path": str(loaded.path),
        "subnet": None if subnet is None else {"summary": subnet.summary(dims), **subnet.to_dict()},
        "adapters": None if loaded.adapters is None else loaded.adapters.describe(),
        "data_dir": str(data_dir),
        "limit": limit,
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "environment": environment(),
        "tasks": results,
    }
