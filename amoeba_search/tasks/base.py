"""What a task is (a data file and how it is scored) and how a model or subnet is scored on a list of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..artifacts import SCHEMA_VERSION, environment
from ..data import MCItem, read_text, require_file
from ..errors import UserError
from ..evaluate import encode_outcomes, multiple_choice, perplexity
from ..models import LoadedModel
from ..subnet import ModelDims, Subnet
from . import TASKS


@dataclass(frozen=True)
class Task:
    """A scored dataset: a path under the data root, and either a text (perplexity) or an MC reader."""

    name: str
    relative_path: str
    headline: str                                   # the metric shown in tables, e.g. "ppl" or "acc"
    read_items: Callable[[Path], list[MCItem]] | None = None  # None: perplexity over the text

    @property
    def is_perplexity(self) -> bool:
        return self.read_items is None

    def run(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data_dir: Path,
            questions: int | None = None, windows: int | None = None, seq_len: int = 512,
            progress: bool = True) -> dict:
        """Score the task on the first `questions` questions (multiple choice, as lm-eval's --limit) or the
        first `windows` windows of `seq_len` tokens (perplexity); None means all."""
        path = require_file(data_dir / self.relative_path, self.name)
        if self.is_perplexity:
            return perplexity(model, tokenizer, read_text(path), seq_len=seq_len, max_windows=windows,
                              progress=progress)
        items = self.read_items(path)[:questions]
        result = multiple_choice(model, tokenizer, items, progress=progress)
        result["outcomes"] = encode_outcomes(result["correct"])                  # for paired comparisons
        for per_question in ("loglikelihoods", "correct", "correct_norm"):        # reports keep the totals
            result.pop(per_question)
        return result


def register_task(name: str, relative_path: str, headline: str,
                  read_items: Callable[[Path], list[MCItem]] | None = None) -> Task:
    """Declare a task (its module is found by TASKS from this call)."""
    return TASKS.register(name)(Task(name, relative_path, headline, read_items))


def parse_tasks(spec: str) -> list[Task]:
    """'wikitext2,arc_easy' -> tasks; unknown names fail with the list of known ones, an empty list too."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UserError(f"--tasks {spec!r} names no task: choose from {TASKS.choices()}")
    return [TASKS.get(name) for name in dict.fromkeys(names)]


def evaluate_tasks(loaded: LoadedModel, tasks: list[Task], data_dir: Path, subnet: Subnet | None = None,
                   questions: int | None = None, windows: int | None = None, seq_len: int = 512,
                   progress: bool = True) -> dict:
    """Score a model (or a subnet of it, through the in-place view) on tasks; the record is the JSON artifact."""
    dims = ModelDims.from_config(loaded.model.config)
    results = {}
    with loaded.view(subnet) as model:
        for task in tasks:
            results[task.name] = task.run(model, loaded.tokenizer, data_dir, questions=questions, windows=windows,
                                          seq_len=seq_len, progress=progress)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "amoeba_search.evaluation",
        "model": loaded.fingerprint,
        "model_path": str(loaded.path),
        "subnet": None if subnet is None else {"summary": subnet.summary(dims), **subnet.to_dict()},
        "adapters": None if loaded.adapters is None else loaded.adapters.describe(),
        "data_dir": str(data_dir),
        "questions": questions,
        "windows": windows,
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "environment": environment(),
        "tasks": results,
    }
