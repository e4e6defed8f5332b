"""WikiText-2 perplexity: the test split (held out) and the valid split (what calibration and the proxy read)."""

from .base import register_task

register_task("wikitext2", "wikitext2/test.txt", "ppl")
register_task("wikitext2_valid", "wikitext2/valid.txt", "ppl")
