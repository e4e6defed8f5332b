import math

import pytest
import torch

from amoeba_search.data import MCItem, data_root, read_arc, read_mmlu, read_text
from amoeba_search.errors import UserError
from amoeba_search.evaluate import _encode, multiple_choice, perplexity
from amoeba_search.extract import extract
from amoeba_search.models import load_model
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.tasks.base import evaluate_tasks, parse_tasks


@pytest.fixture()
def uniform(tiny):
    """Zero LM head: every next-token distribution is uniform over the 257-token vocabulary."""
    with torch.no_grad():
        tiny.model.lm_head.weight.zero_()
    return tiny


def test_uniform_model_perplexity_equals_vocab_size(uniform, tiny_data):
    result = perplexity(uniform.model, uniform.tokenizer, read_text(tiny_data / "wikitext2/test.txt"), seq_len=64,
                        max_windows=5, progress=False)
    assert result["ppl"] == pytest.approx(257.0, rel=1e-5)
    assert result["windows"] == 5 and result["scored_tokens"] == 5 * 63


def test_uniform_model_multiple_choice_by_hand(uniform, tiny_data):
    # Byte tokenizer: a choice " blue" is 5 tokens, so its log-likelihood is -5 ln 257.
    # acc picks the fewest tokens (first on ties); acc_norm divides by the choice's character length:
    #   q0 blue/green/a large red (gold 0): acc -> blue (right), norm -> -12/11 is largest -> wrong
    #   q1 rock/apple (gold 1): acc -> rock (wrong), norm -6/5 > -5/4 -> apple (right)
    #   q2 x/yy/zzz/w (gold 2): acc -> x (wrong), norm -4/3 is largest -> zzz (right)
    items = read_arc(tiny_data / "arc/arc_easy_validation.jsonl")
    result = multiple_choice(uniform.model, uniform.tokenizer, items, progress=False)
    assert result["loglikelihoods"][0] == pytest.approx([-5 * math.log(257), -6 * math.log(257),
                                                         -12 * math.log(257)], rel=1e-5)
    assert result["acc"] == pytest.approx(100 / 3) and result["acc_norm"] == pytest.approx(200 / 3)
    assert result["correct"] == [True, False, False] and result["correct_norm"] == [False, True, True]


def _naive_loglikelihoods(model, tokenizer, item):
    out = []
    for continuation in item.continuations:
        context_ids, cont_ids = _encode(tokenizer, item.context, continuation)
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([context_ids + cont_ids])).logits[0].log_softmax(-1)
        out.append(sum(logprobs[len(context_ids) - 1 + j, t].item() for j, t in enumerate(cont_ids)))
    return out


def test_packed_scoring_matches_one_forward_per_choice(tiny, tiny_data):
    items = read_arc(tiny_data / "arc/arc_easy_validation.jsonl") + read_mmlu(tiny_data / "mmlu/zero_shot_val.jsonl")
    items.append(MCItem("Trailing space ", ("a", "bc"), 1, (1, 2)))
    # A tiny batch budget forces several batches with padding.
    result = multiple_choice(tiny.model, tiny.tokenizer, items, max_batch_tokens=64, progress=False)
    for item, got in zip(items, result["loglikelihoods"]):
        assert got == pytest.approx(_naive_loglikelihoods(tiny.model, tiny.tokenizer, item), abs=1e-4)


def test_perplexity_matches_transformers_loss(tiny, tiny_data):
    text = read_text(tiny_data / "wikitext2/test.txt")
    result = perplexity(tiny.model, tiny.tokenizer, text, seq_len=50, max_windows=3, batch_size=2, progress=False)
    ids = torch.tensor(tiny.tokenizer(text)["input_ids"][:150]).view(3, 50)
    with torch.no_grad():
        losses = [tiny.model(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    assert result["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-4)


def test_subnet_view_evaluation_equals_extracted_model(tiny, tiny_data, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    subnet = Subnet.uniform(dims, [0, 1, 4], heads=2, mlp=0.5)
    tasks = parse_tasks("wikitext2,arc_easy")
    viewed = evaluate_tasks(tiny, tasks, tiny_data, subnet=subnet, seq_len=64, progress=False)
    small = load_model(str(extract(tiny, subnet, tmp_path / "small")))
    direct = evaluate_tasks(small, tasks, tiny_data, seq_len=64, progress=False)
    assert viewed["tasks"]["wikitext2"]["ppl"] == pytest.approx(direct["tasks"]["wikitext2"]["ppl"], rel=1e-5)
    assert viewed["tasks"]["arc_easy"]["acc"] == direct["tasks"]["arc_easy"]["acc"]
    outcomes = viewed["tasks"]["arc_easy"]["outcomes"]                  # per question, for paired comparisons
    assert outcomes == direct["tasks"]["arc_easy"]["outcomes"] and len(outcomes) == 3 and set(outcomes) <= {"0", "1"}
    assert 100 * outcomes.count("1") / 3 == pytest.approx(viewed["tasks"]["arc_easy"]["acc"])
    assert viewed["subnet"]["layers"] == [0, 1, 4] and viewed["model"] == tiny.fingerprint


def test_readers(tiny_data, tmp_path):
    arc = read_arc(tiny_data / "arc/arc_easy_validation.jsonl")
    assert [i.gold for i in arc] == [0, 1, 2]
    assert arc[0].context == "Question: What color is the sky?\nAnswer:" and arc[0].continuations[0] == " blue"
    assert [i.gold for i in read_mmlu(tiny_data / "mmlu/zero_shot_val.jsonl")] == [0, 1, 2, 3]
    with pytest.raises(UserError, match="data directory not found"):
        data_root(tmp_path / "nowhere")
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "question": "q", "choices": {"text": ["a"], "label": ["A"]}, '
                                        '"answerKey": "B"}\n')
    with pytest.raises(UserError, match="answerKey 'B' is not among"):
        read_arc(tmp_path / "bad.jsonl")
