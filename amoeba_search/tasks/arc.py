"""ARC easy and challenge, validation splits, `Question: ...\nAnswer:` prompt (lm-evaluation-harness's)."""

from ..data import read_arc
from .base import register_task

register_task("arc_easy", "arc/arc_easy_validation.jsonl", "acc", read_arc)
register_task("arc_challenge", "arc/arc_challenge_validation.jsonl", "acc", read_arc)
