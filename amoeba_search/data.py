"""Readers for the evaluation data in ../shared/data: WikiText text and multiple-choice JSONL (ARC, MMLU)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UserError

DATA_ENV = "AMOEBA_DATA_DIR"


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: a context, continuations to score (with their leading delimiter), the answer."""

    context: str
    continuations: tuple[str, ...]
    gold: int
    # Length used by acc_norm: lm-evaluation-harness divides by the character length of the choice text.
    choice_lengths: tuple[int, ...]


def data_root(override: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $AMOEBA_DATA_DIR, else ../shared/data relative to the working dir or to this project."""
    candidates = [Path(override)] if override else []
    if not candidates and os.environ.get(DATA_ENV):
        candidates = [Path(os.environ[DATA_ENV])]
    if not candidates:
        candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise UserError(f"data directory not found (looked in {', '.join(str(p) for p in candidates)}): "
                    f"pass --data-dir DIR or set {DATA_ENV}")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} file {path} not found: check --data-dir (expected the layout of ../shared/data)")
    return path


def read_text(path: Path) -> str:
    try:
        return require_file(path, "text").read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): convert it, e.g. `iconv -t utf-8`") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _field(path: Path, number: int, record, *keys: str, kind: type = str):
    """record[k1][k2]... of the expected type, else one line naming file:line and the field."""
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{path}:{number}: missing field {'.'.join(keys)!r}")
        value = value[key]
    if not isinstance(value, kind):
        raise UserError(f"{path}:{number}: field {'.'.join(keys)!r} must be a {kind.__name__}")
    return value


def _nonempty(path: Path, items: list[MCItem]) -> list[MCItem]:
    if not items:
        raise UserError(f"{path} holds no questions: one JSON record per line")
    return items


def read_arc(path: Path) -> list[MCItem]:
    """AI2 ARC records scored as lm-eval's arc tasks: `Question: q\\nAnswer:` + ' ' + choice."""
    items = []
    for number, record in _numbered_jsonl(path):
        texts = _field(path, number, record, "choices", "text", kind=list)
        labels = _field(path, number, record, "choices", "label", kind=list)
        question, answer = _field(path, number, record, "question"), _field(path, number, record, "answerKey")
        if not texts or len(texts) != len(labels) or not all(isinstance(t, str) for t in texts + labels):
            raise UserError(f"{path}:{number}: choices.text and choices.label must be equal-length lists of strings")
        if answer not in labels:
            raise UserError(f"{path}:{number}: answerKey {answer!r} is not among its labels {labels}")
        items.append(MCItem(context=f"Question: {question}\nAnswer:", continuations=tuple(f" {t}" for t in texts),
                            gold=labels.index(answer), choice_lengths=tuple(len(t) for t in texts)))
    return _nonempty(path, items)


def read_mmlu(path: Path) -> list[MCItem]:
    """MMLU zero-shot prompts ending in 'Answer:', scored over the letters ' A'..' D'."""
    letters = ("A", "B", "C", "D")
    items = []
    for number, record in _numbered_jsonl(path):
        context, answer = _field(path, number, record, "input"), _field(path, number, record, "output")
        if answer not in letters:
            raise UserError(f"{path}:{number}: answer {answer!r} is not one of {letters}")
        items.append(MCItem(context=context, continuations=tuple(f" {c}" for c in letters),
                            gold=letters.index(answer), choice_lengths=(1, 1, 1, 1)))
    return _nonempty(path, items)


CORPUS_HEADER_KIND = "amoeba_search.distill_corpus"
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}")


def alpaca_text(instruction: str, input_text: str, output: str) -> str:
    template = ALPACA_WITH_INPUT if input_text.strip() else ALPACA_NO_INPUT
    return template.format(instruction=instruction, input=input_text, output=output)


def _instruction_texts(path: Path, number: int, record: dict) -> list[str]:
    """Alpaca records ({instruction, input?, output}), self-instruct seed tasks ({instruction, instances: [{input,
    output}]}), prompt-completion records ({input, output}: the MMLU calibration file, read as prompt, a space, answer)
    or {text}; a record matching none is named with the field it lacks."""
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: a record must be a JSON object")
    if record.get("kind") == CORPUS_HEADER_KIND:       # the header line of a distillation corpus
        return []
    if isinstance(record.get("text"), str):
        return [record["text"]]
    if "instruction" not in record and isinstance(record.get("input"), str) and isinstance(record.get("output"), str):
        return [record["input"].rstrip() + " " + record["output"].strip()]
    if not isinstance(record.get("instruction"), str):
        raise UserError(f"{path}:{number}: missing string field 'instruction' (or 'text', or 'input' and 'output'); "
                        "instruction data needs {\"instruction\", \"input\", \"output\"} records")
    instances = record["instances"] if "instances" in record else [record]
    if not isinstance(instances, list) or not instances:
        raise UserError(f"{path}:{number}: 'instances' must be a non-empty list of {{input, output}} objects")
    texts = []
    for instance in instances:
        if not isinstance(instance, dict) or not isinstance(instance.get("output"), str):
            raise UserError(f"{path}:{number}: missing string field 'output'")
        input_text = instance.get("input") or ""
        if not isinstance(input_text, str):
            raise UserError(f"{path}:{number}: field 'input' must be a string")
        texts.append(alpaca_text(record["instruction"], input_text, instance["output"]))
    return texts


def read_instruction_prompts(path: Path) -> list[str]:
    """The instructions of an instruction file (with their input, if any), without the answers: prompts for the
    model to answer in its own words."""
    prompts = []
    for number, record in _numbered_jsonl(Path(path)):
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise UserError(f"{path}:{number}: missing string field 'instruction'")
        instances = record.get("instances") or [record]
        inputs = [i.get("input") or "" for i in instances if isinstance(i, dict)] or [""]
        prompts += [f"{record['instruction']}\n\n{text}".strip() for text in inputs]
    if not prompts:
        raise UserError(f"{path} holds no instructions")
    return prompts


def read_training_texts(path: Path) -> list[str]:
    """Training documents: JSONL instruction records in the Alpaca prompt template, or a plain text file."""
    path = Path(path)
    if path.suffix == ".jsonl":
        texts = [t for number, record in _numbered_jsonl(path) for t in _instruction_texts(path, number, record)]
    else:
        texts = [read_text(path)]
    if not any(t.strip() for t in texts):
        raise UserError(f"{path} holds no text to train on")
    return texts


def _numbered_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with require_file(path, "JSONL").open(encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text: convert it, e.g. `iconv -t utf-8`") from None
