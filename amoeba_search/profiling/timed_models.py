"""The models a profile times: the model with no blocks (base) and k real extracted blocks of one width."""

from __future__ import annotations

import copy

from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import UserError
from ..extract import extract_model
from ..families.base import model_dims
from ..subnet import Subnet


MAX_DEFAULT_LAYERS_PER_ROW = 20


def default_layers_per_row(num_layers: int, mlp_only_rows: bool = False) -> int:
    """Blocks per timed row when none is given: two thirds of the model's depth, at most 20. Why deep rows: a
    narrow block costs more inside a deep model than inside a shallow one (caches, dispatch), and searched
    subnets are deep; on the 2-core Xeon, 20-block rows took torch-eager's composed MAPE from 6.8% to 4.4%
    (uniform) and 9.8% to 2.5% (heterogeneous) against 8-block rows (benchmarks/results/predictor-intel-xeon*.md).
    MLP-only rows need one lead block more, so they leave one layer out."""
    most = max(1, num_layers - (1 if mlp_only_rows else 0))
    return max(1, min(MAX_DEFAULT_LAYERS_PER_ROW, round(2 * num_layers / 3), most))


def base_model(model: PreTrainedModel) -> PreTrainedModel:
    """The model with no decoder blocks (embedding, final norm, LM head): the per-call part of every subnet."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 0
    if getattr(config, "layer_types", None):
        config.layer_types = []
    empty = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    state = {k: v for k, v in model.state_dict().items() if ".layers." not in k}
    empty.load_state_dict(state, strict=False)
    empty.tie_weights()
    return empty.eval()


def block_model(model: PreTrainedModel, layers: int, heads: int, mlp: int,
                lead: tuple[int, int] | None = None) -> PreTrainedModel:
    """A real extracted model of `layers` blocks (the first ones) at one uniform width. MLP-only blocks (heads 0)
    follow one `lead` block (the grid's widest width): llama.cpp reads the head size from the first layer, and
    the fit counts that block (`fit_lut`), so every flow times them the same way."""
    dims = model_dims(model.config)
    if heads:
        return extract_model(model, Subnet.uniform(dims, range(layers), heads=heads, mlp=mlp))
    if lead is None:
        raise UserError("an MLP-only block row needs the lead block's width")
    first = Subnet.uniform(dims, [0], heads=lead[0], mlp=lead[1])
    return extract_model(model, Subnet(tuple(range(layers + 1)), first.heads + ((),) * layers,
                                       first.mlp_channels + (tuple(range(mlp)),) * layers))


def lead_width(widths) -> tuple[int, int]:
    """The block an MLP-only row's model starts with: the widest (heads, MLP) with attention."""
    return max((h, m) for h, m in widths if h > 0)


