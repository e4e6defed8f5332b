import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from amoeba_search.errors import UserError
from amoeba_search.extract import SUBNET_FILE, extract, extract_model
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.view import subnet_view

IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _subnets(dims):
    return {
        "full": Subnet.full(dims),
        "depth": Subnet.uniform(dims, [0, 2, 4]),
        "mlp": Subnet.uniform(dims, range(5), mlp=0.5),
        "heads-per-group": Subnet.uniform(dims, range(5), heads=4),
        "heads-whole-group": Subnet.uniform(dims, [1, 3, 4], heads=3, mlp=20),
        "chosen-indices": Subnet.from_dict({"layers": [0, 1, 3],
                                            "heads": [[3, 4, 5]] * 3, "mlp_channels": [[1, 5, 9, 40, 47]] * 3}, dims),
    }


def _zeroed_reference(model, subnet, dims):
    """Independent reference: delete layers and zero the o_proj / down_proj input columns of dropped heads/channels."""
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    with torch.no_grad():
        for layer_idx, heads, channels in zip(subnet.layers, subnet.heads, subnet.mlp_channels):
            block = layers[layer_idx]
            for h in set(range(dims.num_heads)) - set(heads):
                block.self_attn.o_proj.weight[:, h * dims.head_dim:(h + 1) * dims.head_dim] = 0
            for c in set(range(dims.intermediate_size)) - set(channels):
                block.mlp.down_proj.weight[:, c] = 0
    ref.model.layers = nn.ModuleList([layers[i] for i in subnet.layers])
    return ref


@pytest.mark.parametrize("name", ["full", "depth", "mlp", "heads-per-group", "heads-whole-group", "chosen-indices"])
def test_view_matches_zeroed_reference_and_extraction(tiny, name):
    dims = ModelDims.from_config(tiny.model.config)
    subnet = _subnets(dims)[name]
    with subnet_view(tiny.model, subnet):
        viewed = _logits(tiny.model)
    reference = _logits(_zeroed_reference(tiny.model, subnet, dims))
    extracted = _logits(extract_model(tiny.model, subnet))
    assert torch.allclose(viewed, reference, atol=1e-5)
    assert (viewed - extracted).abs().max().item() <= 1e-4
    if name != "full":
        assert not torch.allclose(viewed, _logits(tiny.model), atol=1e-3)  # the subnet really differs


def test_view_restores_model_even_after_error(tiny):
    dims = ModelDims.from_config(tiny.model.config)
    before = _logits(tiny.model)
    with pytest.raises(RuntimeError):
        with subnet_view(tiny.model, Subnet.uniform(dims, [0, 1], heads=2, mlp=0.5)):
            raise RuntimeError("boom")
    assert len(tiny.model.model.layers) == 5
    assert all(block.self_attn.num_key_value_groups == 3 for block in tiny.model.model.layers)
    assert torch.equal(_logits(tiny.model), before)


def test_extracted_checkpoint_loads_with_plain_transformers(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    subnet = Subnet.uniform(dims, [0, 2, 3], heads=4, mlp=0.5)
    out = extract(tiny, subnet, tmp_path / "sub")
    with subnet_view(tiny.model, subnet):
        expected = _logits(tiny.model)
    torch.save(IDS, tmp_path / "ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"torch.save(m(input_ids=ids).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
        "assert not any(name.startswith('amoeba_search') for name in sys.modules)\n"
        "print(m.config.num_hidden_layers, m.config.num_attention_heads, m.config.num_key_value_heads, "
        "m.config.intermediate_size)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["3", "4", "2", "24"]
    assert (torch.load(tmp_path / "logits.pt") - expected).abs().max().item() <= 1e-4
    provenance = json.loads((out / SUBNET_FILE).read_text())
    assert provenance["layers"] == [0, 2, 3] and provenance["model"] == tiny.fingerprint


def test_per_layer_widths_extract_to_a_checkpoint_our_loader_builds(tiny, tmp_path):
    """Each layer keeps its own Linear shapes; plain from_pretrained refuses the file loudly (never loads it
    wrong), amoeba's loader builds it, and it computes what the view computes."""
    from amoeba_search.models import load_model

    dims = ModelDims.from_config(tiny.model.config)
    per_layer = Subnet.from_dict({"layers": [0, 1, 4], "heads": [[0, 1, 2, 3, 4, 5], [0, 3], [0, 1, 2]],
                                  "mlp_channels": [[0, 1], [0, 1, 2], list(range(48))]}, dims)
    extract(tiny, per_layer, tmp_path / "x")
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 1, 200]])
    with torch.no_grad(), subnet_view(tiny.model, per_layer):
        expected = tiny.model(input_ids=ids).logits
    reloaded = load_model(str(tmp_path / "x")).model
    assert [layer.mlp.down_proj.in_features for layer in reloaded.model.layers] == [2, 3, 48]
    assert [layer.self_attn.k_proj.out_features // 16 for layer in reloaded.model.layers] == [2, 2, 1]
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - expected).abs().max().item() <= 1e-4
    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(tmp_path / "x")


def test_extraction_refuses_an_existing_output(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="already exists"):
        extract(tiny, Subnet.full(dims), tmp_path / "exists")


def test_interrupted_extract_leaves_nothing(tiny, tmp_path, monkeypatch):
    dims = ModelDims.from_config(tiny.model.config)
    monkeypatch.setattr(type(tiny.tokenizer), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        extract(tiny, Subnet.full(dims), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tiny, tmp_path):
    """Atomic writes (temp file + rename) must not leave 0600/0700 files another user cannot read."""
    import os
    import stat

    from amoeba_search.artifacts import write_json_atomic

    old = os.umask(0o022)
    try:
        path = extract(tiny, Subnet.uniform(ModelDims.from_config(tiny.model.config), [0, 1]), tmp_path / "ckpt")
        record = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044 for f in path.rglob("*") if f.is_file())


def test_compensation_a_family_cannot_hold_is_refused_not_dropped(tmp_path):
    """Qwen2 hard-codes bias=False on o_proj and the MLP: a compensated subnet cannot be extracted exactly, so it is
    refused with the fix; the uncompensated one extracts and equals the view."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from amoeba_search.view import subnet_view

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                         max_position_embeddings=64)).eval()
    dims = ModelDims.from_config(model.config)
    plain = Subnet.uniform(dims, [0, 2], heads=2, mlp=16)
    compensated = Subnet(plain.layers, plain.heads, plain.mlp_channels,
                         tuple(((0.1,) * 48, (0.2,) * 48) for _ in plain.layers))
    with pytest.raises(UserError, match="self_attn.o_proj has no bias .* --no-compensate"):
        extract_model(model, compensated)
    ids = torch.tensor([[1, 5, 9, 3]])
    small = extract_model(model, plain)
    with torch.no_grad(), subnet_view(model, plain) as viewed:
        assert torch.allclose(small(ids).logits, viewed(ids).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "qwen2-sliding"])
def test_view_follows_per_layer_types_when_layers_are_dropped(family):
    """Models that pick each layer's attention (sliding vs full) by its position in config.layer_types: the
    in-place view must run the kept layers with their own types, as the extracted checkpoint does."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from amoeba_search.view import subnet_view

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=48, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, sliding_window=3)
    model = (Gemma2ForCausalLM(Gemma2Config(**common, head_dim=12, layer_types=[
        "sliding_attention", "full_attention", "sliding_attention", "full_attention"])) if family == "gemma2" else
        Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, max_window_layers=2))).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    types, indices = list(model.config.layer_types), [layer.self_attn.layer_idx for layer in model.model.layers]
    dims = ModelDims.from_config(model.config)
    ids = torch.randint(0, 64, (1, 12))                       # longer than the window: the types matter
    for layers in ([0, 2, 3], [1, 2, 3], [1, 3]):
        subnet = Subnet.uniform(dims, layers)
        small = extract_model(model, subnet)
        with torch.no_grad(), subnet_view(model, subnet) as viewed:
            assert torch.allclose(viewed(ids).logits, small(ids).logits, atol=1e-5), layers
    assert model.config.layer_types == types                  # restored
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == indices
