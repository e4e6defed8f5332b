"""Independent implementation: lm-evaluation-harness must give the same acc / acc_norm on the same questions."""

import json
import random

import pytest

from amoeba_search.data import read_arc
from amoeba_search.evaluate import multiple_choice
from amoeba_search.lm_eval_bridge import lm_eval_arc

pytest.importorskip("lm_eval")


def test_lm_eval_agrees_on_tiny_model(tiny, tiny_dir, tmp_path):
    rng = random.Random(0)
    words = ["red", "stone", "river", "a small cat", "light", "the sun", "water", "x", "grows", "metal bar"]
    data = tmp_path / "arc.jsonl"
    with open(data, "w") as handle:
        for i in range(24):
            choices = rng.sample(words, 4)
            handle.write(json.dumps({"id": str(i), "question": f"Which {rng.choice(words)} is {i}?",
                                     "choices": {"text": choices, "label": list("ABCD")},
                                     "answerKey": rng.choice("ABCD")}) + "\n")
    ours = multiple_choice(tiny.model, tiny.tokenizer, read_arc(data), progress=False)
    theirs = lm_eval_arc(tiny_dir, data, tmp_path / "tasks", batch_size=8)
    assert ours["acc"] == pytest.approx(theirs["acc"], abs=1e-6)
    assert ours["acc_norm"] == pytest.approx(theirs["acc_norm"], abs=1e-6)
