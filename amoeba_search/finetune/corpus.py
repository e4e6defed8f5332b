"""A distillation corpus written by the full model itself: continuations of instruction prompts (in the model's chat
template when it has one) and of plain-text openings, sampled with temperature. Text the model generates is what a
student must imitate to keep the teacher's behaviour, it exists offline, and it does not overlap any evaluation
split (WikiText-2, ARC, MMLU stay out of training).

The file is JSONL: a header line with the model fingerprint and the generation settings, then one line per sample.
Batches are seeded from (seed, batch index) and appended whole, so an interrupted run resumes and writes exactly the
file an uninterrupted one would; a file made with other settings is refused."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import SCHEMA_VERSION, environment
from ..data import CORPUS_HEADER_KIND, read_instruction_prompts
from ..errors import UserError

if TYPE_CHECKING:                 # the CLI reads the settings' defaults without importing torch
    from ..models import LoadedModel

CORPUS_KIND = CORPUS_HEADER_KIND

# Plain-text openings across everyday domains: the model continues them in its own words.
OPENINGS = (
    "The history of", "In mathematics,", "A simple way to", "Scientists have found that", "The main reason why",
    "Once upon a time,", "Here is a short explanation of", "Many people believe that", "The best way to learn",
    "In the year", "The city of", "An important part of", "When you cook", "The human body", "In economics,",
    "A good friend", "The weather today", "Computers work by", "The ocean", "During the war,", "My favourite book",
    "To solve this problem,", "Animals that live in", "The word", "Music is", "In a small village,",
    "The most common", "Electricity is", "A healthy diet", "The first step is",
)


# The `self_ppl` search proxy scores subnets on a corpus batch written with this seed: prompts are drawn from
# (seed, sample index), so training text made with it would hold the proxy's own prompts and often its very text.
HELD_OUT_SEED = 1


def refuse_held_out(seed: int, path: Path | None = None) -> None:
    """Training text must not be the `self_ppl` proxy's held-out text: one line naming the fix instead."""
    if seed == HELD_OUT_SEED:
        where = f"{path} was written" if path is not None else "--seed"
        raise UserError(f"{where} with seed {HELD_OUT_SEED}, which the self_ppl search proxy keeps for its held-out "
                        "text: training on it would make that proxy score training text. Write the corpus with "
                        "another --seed")


def corpus_seed(path: Path) -> int | None:
    """The generation seed in a distillation corpus's header line; None for any other file."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        try:
            header = json.loads(handle.readline() or "null")
        except json.JSONDecodeError:
            return None
    if not isinstance(header, dict) or header.get("kind") != CORPUS_KIND:
        return None
    seed = (header.get("settings") or {}).get("seed")
    return seed if isinstance(seed, int) else None


@dataclass(frozen=True)
class CorpusSettings:
    """Defaults: 640 samples of up to 128 new tokens (~110k tokens with prompts), about 8 min on 2 CPU cores
    (generation runs at ~190 tokens/s in batches of 64 there; top-k is cheaper than top-p's full-vocabulary sort)."""

    samples: int = 640
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 50
    batch_size: int = 64
    instruction_share: float = 0.7       # the rest continue plain-text openings
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise UserError(f"corpus {name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0 or not 0 <= self.instruction_share <= 1:
            raise UserError("corpus temperature must be > 0 and instruction_share in [0, 1]")


def prompts_for(loaded: LoadedModel, instructions: list[str], settings: CorpusSettings) -> list[str]:
    """One prompt per sample, drawn from (seed, index): chat-formatted instructions or plain-text openings."""
    tokenizer = loaded.tokenizer
    prompts = []
    for index in range(settings.samples):
        rng = random.Random(settings.seed * 1_000_003 + index)
        if instructions and rng.random() < settings.instruction_share:
            instruction = rng.choice(instructions)
            if tokenizer.chat_template:
                prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                                             tokenize=False, add_generation_prompt=True))
            else:
                prompts.append(f"{instruction}\n\n")
        else:
            prompts.append(rng.choice(OPENINGS))
    return prompts


def _header(loaded: LoadedModel, settings: CorpusSettings, prompt_source: str) -> dict:
    return {"kind": CORPUS_KIND, "schema_version": SCHEMA_VERSION, "model": loaded.fingerprint,
            "settings": asdict(settings), "prompt_source": prompt_source, "environment": environment()}


def _complete_samples(path: Path, header: dict, batch_size: int) -> int:
    """Samples already in a resumable file (whole batches only; a torn tail is cut off), or a refusal."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    try:
        saved = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or saved.get("kind") != CORPUS_KIND:
        raise UserError(f"{path} exists and is not a distillation corpus: pass another --corpus path")
    for field in ("model", "settings", "prompt_source"):
        if saved.get(field) != header[field]:
            raise UserError(f"{path} was generated with a different {field} ({saved.get(field)}): pass its "
                            "settings to resume it, or another --corpus path")
    good = 0
    for line in lines[1:]:
        if not line.endswith("\n"):
            break
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good += 1
    good -= good % batch_size
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(lines[: 1 + good])
    return good


def generate_corpus(loaded: LoadedModel, instructions_file: Path, out: Path, settings: CorpusSettings,
                    progress: bool = True) -> Path:
    """Write (or finish) the corpus at `out` with the full model, without adapters; returns the path."""
    import torch
    from tqdm.auto import tqdm

    instructions = read_instruction_prompts(instructions_file)
    header = _header(loaded, settings, str(Path(instructions_file).name))
    out = Path(out)
    done = _complete_samples(out, header, settings.batch_size) if out.exists() else 0
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(header) + "\n", encoding="utf-8")
    prompts = prompts_for(loaded, instructions, settings)
    tokenizer, model = loaded.tokenizer, loaded.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"                 # decoder-only generation continues from the right edge
    try:
        with torch.inference_mode(), tqdm(total=settings.samples, initial=done, desc="corpus", unit="sample", disable=not progress) as bar:
            for start in range(done, settings.samples, settings.batch_size):
                batch = prompts[start:start + settings.batch_size]
                encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                torch.manual_seed(settings.seed * 1_000_003 + start // settings.batch_size)
                output = model.generate(**encoded, do_sample=True, temperature=settings.temperature,
                                        top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
                                        pad_token_id=pad)                     # (B, prompt + new)
                new = output[:, encoded["input_ids"].shape[1]:]
                lines = []
                for offset, (prompt, ids) in enumerate(zip(batch, new)):
                    completion = tokenizer.decode(ids, skip_special_tokens=True)
                    lines.append(json.dumps({"index": start + offset, "prompt": prompt,
                                             "text": prompt + completion}) + "\n")
                with out.open("a", encoding="utf-8") as handle:      # one whole batch per append
                    handle.writelines(lines)
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = side
    return out
