"""Cross-check against lm-evaluation-harness (optional): same ARC task from local JSONL, scored by lm-eval's `hf` model."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

# lm-eval's own arc_easy task, pointed at a local JSONL instead of the Hub.
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data_file}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_task_yaml(tasks_dir: Path, data_file: Path, name: str = "arc_easy_local") -> Path:
    """Write an lm-eval task config for an ARC-format JSONL file; `--include_path tasks_dir` makes it available."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    path = tasks_dir / f"{name}.yaml"
    path.write_text(TASK_YAML.format(name=name, data_file=Path(data_file).resolve()))
    return path


def lm_eval_arc(model_dir: Path, data_file: Path, tasks_dir: Path, limit: int | None = None,
                batch_size: int = 16) -> dict:
    """acc / acc_norm (percent) of lm-eval's `hf` model on an ARC-format file; needs `pip install lm-eval`."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UserError("lm-evaluation-harness is not installed: pip install lm-eval") from exc
    name = "arc_local_check"
    write_task_yaml(tasks_dir, data_file, name)
    output = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[name],
                             task_manager=TaskManager(include_path=str(tasks_dir)), batch_size=batch_size,
                             device="cpu", limit=limit)
    metrics = output["results"][name]
    return {"acc": 100.0 * metrics["acc,none"], "acc_norm": 100.0 * metrics["acc_norm,none"]}
