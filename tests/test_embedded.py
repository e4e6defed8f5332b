"""A few checks on the embedded SmolLM2-135M (converted once to a safetensors cache, then loads in seconds)."""

import pytest
import torch

from amoeba_search.data import data_root, read_arc
from amoeba_search.errors import UserError
from amoeba_search.evaluate import multiple_choice
from amoeba_search.extract import extract_model
from amoeba_search.models import DEFAULT_MODEL, load_model
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.view import subnet_view

from .test_evaluate import _naive_loglikelihoods

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def smol():
    return load_model("default")


def test_embedded_model_shape_and_fingerprint(smol):
    dims = ModelDims.from_config(smol.model.config)
    assert (dims.num_layers, dims.hidden_size, dims.intermediate_size, dims.num_heads, dims.num_kv_heads) == \
        (30, 576, 1536, 9, 3)
    assert smol.model.dtype == torch.float32
    assert smol.fingerprint["name"] == DEFAULT_MODEL and len(smol.fingerprint["config_sha256"]) == 16
    assert not hasattr(smol.model.config, "quantization_config")


@pytest.mark.parametrize("layers, heads, mlp", [(list(range(10)) + list(range(20, 30)), None, None),
                                                (list(range(30)), None, 0.75),
                                                ([0, 1, 2, 5, 8, 13, 21, 28, 29], 6, 0.5)])
def test_view_equals_extracted_on_embedded(smol, layers, heads, mlp):
    dims = ModelDims.from_config(smol.model.config)
    subnet = Subnet.uniform(dims, layers, heads=heads, mlp=mlp)
    ids = smol.tokenizer("Elastic language models shrink to fit the device.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with subnet_view(smol.model, subnet):
            viewed = smol.model(input_ids=ids).logits
        small = extract_model(smol.model, subnet)
        extracted = small(input_ids=ids).logits
    assert (viewed - extracted).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in smol.model.parameters())


def test_packed_scoring_on_real_arc_questions(smol):
    try:
        items = read_arc(data_root() / "arc/arc_easy_validation.jsonl")[:6]
    except UserError:
        pytest.skip("../shared/data is not present")
    result = multiple_choice(smol.model, smol.tokenizer, items, progress=False)
    for item, got in zip(items, result["loglikelihoods"]):
        assert got == pytest.approx(_naive_loglikelihoods(smol.model, smol.tokenizer, item), abs=1e-3)


def test_shipped_adapters_load_for_the_embedded_model_and_strategy(smol, tmp_path):
    """The shipped adapters are small bf16 files for this model and the shipped strategy, a corrupt copy is one
    clear error, and the demo's `--adapters default` finds them."""
    import shutil

    from amoeba_search.finetune.checkpoint import load_adapters, shipped_adapters_for
    from amoeba_search.resources import shipped_adapters, shipped_strategy
    from amoeba_search.selection.strategy import Strategy
    from safetensors import safe_open

    path = shipped_adapters_for(smol)
    assert path == shipped_adapters()
    weights = path / "adapters.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    with safe_open(str(weights), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    adapters = load_adapters(smol, path)
    adapters.check_strategy(Strategy.load(shipped_strategy()))
    assert adapters.record["training"]["teacher"] == "frozen" and adapters.record["step"] >= 100
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "adapters.safetensors").write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="unreadable or do not match"):
        load_adapters(smol, broken)
