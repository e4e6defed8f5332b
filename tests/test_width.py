import pytest
import torch

from amoeba_search.data import read_text
from amoeba_search.errors import UserError
from amoeba_search.extract import extract_model
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.width import WIDTH_SCORERS, choose_heads, width_section, width_subnet
from amoeba_search.view import subnet_view

from .test_subnet import TINY


@pytest.fixture()
def calibration(tiny, tiny_data):
    return text_calibration(tiny.tokenizer, read_text(tiny_data / "wikitext2/valid.txt"), samples=3, seq_len=48)


def test_choose_heads_respects_gqa():
    scores = [0.1, 0.9, 0.5, 0.3, 0.2, 0.8]          # group 0: heads 0-2, group 1: heads 3-5
    assert choose_heads(scores, 4, TINY) == (1, 2, 3, 5)   # best two in each group
    assert choose_heads(scores, 2, TINY) == (1, 5)         # best one in each group
    assert choose_heads(scores, 3, TINY) == (0, 1, 2)      # best whole group (1.5 > 1.3)
    with pytest.raises(UserError, match="not realisable"):
        choose_heads(scores, 5, TINY)


def _down_proj_output(model, subnet, layer_position, ids):
    captured = []
    block = model.model.layers[subnet.layers[layer_position]] if subnet else model.model.layers[0]
    handle = block.mlp.down_proj.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            if subnet:
                with subnet_view(model, subnet):
                    model(input_ids=ids)
            else:
                model(input_ids=ids)
    finally:
        handle.remove()
    return captured[0].reshape(-1, captured[0].shape[-1])


@pytest.mark.parametrize("method", WIDTH_SCORERS.names())
def test_compensation_preserves_the_mean_output(tiny, calibration, method):
    width = width_section(tiny.model, calibration, method)
    subnet = width_subnet(tiny.model, width, [0, 1, 2, 3, 4], mlp=0.5)
    ids = calibration.input_ids
    full = _down_proj_output(tiny.model, None, 0, ids)
    pruned = _down_proj_output(tiny.model, subnet, 0, ids)   # layer 0's MLP input is unchanged by the pruning
    assert torch.allclose(pruned.mean(0), full.mean(0), atol=1e-5)
    assert not torch.allclose(pruned, full, atol=1e-3)
    without = width_subnet(tiny.model, width, [0, 1, 2, 3, 4], mlp=0.5, compensate=False)
    assert without.bias is None and without.mlp_channels == subnet.mlp_channels


def test_flap_keeps_the_fluctuating_channels(tiny, calibration):
    width = width_section(tiny.model, calibration, "flap")
    with torch.no_grad():
        tiny.model.model.layers[0].mlp.up_proj.weight[7] *= 50    # channel 7 of layer 0 now fluctuates strongly
    boosted = width_section(tiny.model, calibration, "flap")
    assert boosted.mlp_scores[0][7] > 100 * width.mlp_scores[0][7]
    assert 7 in width_subnet(tiny.model, boosted, [0], mlp=0.1).mlp_channels[0]


def test_compensated_subnet_extracts_with_biases(tiny, calibration):
    width = width_section(tiny.model, calibration, "flap")
    subnet = width_subnet(tiny.model, width, [0, 2, 4], heads=4, mlp=0.5)
    ids = calibration.input_ids[:1]
    with torch.no_grad(), subnet_view(tiny.model, subnet):
        viewed = tiny.model(input_ids=ids).logits
    small = extract_model(tiny.model, subnet)
    assert small.config.attention_bias and small.config.mlp_bias
    with torch.no_grad():
        assert (small(input_ids=ids).logits - viewed).abs().max().item() <= 1e-4


def test_adaptive_allocation_varies_per_layer(tiny, calibration):
    width = width_section(tiny.model, calibration, "flap")
    subnet = width_subnet(tiny.model, width, [0, 1, 2, 3, 4], mlp=0.5, allocation="adaptive")
    counts = [len(c) for c in subnet.mlp_channels]
    assert abs(sum(counts) - 24 * 5) <= 5 and len(set(counts)) > 1
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad(), subnet_view(tiny.model, subnet):
        viewed = tiny.model(input_ids=ids).logits
    with torch.no_grad():                              # the extracted model keeps every layer's own width
        assert (extract_model(tiny.model, subnet)(input_ids=ids).logits - viewed).abs().max().item() <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compensation_follows_the_weights_device():
    """Found on a lent H100: the compensation indexed CUDA weights with CPU indices."""
    from amoeba_search.selection.width import _compensation

    weight, mean = torch.randn(4, 6), [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
    assert _compensation(weight.cuda(), mean, [1, 3]) == pytest.approx(_compensation(weight, mean, [1, 3]))
