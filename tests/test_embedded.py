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


def test_a_heterogeneous_subnet_of_the_embedded_model_runs_in_llama_cpp_like_the_view(smol, tmp_path):
    """The shipped strategy's per-layer subnet (removed, narrowed, MLP-only layers, FLAP compensation) exported
    as f32 GGUF (llama.cpp's deci architecture, the embedded tokenizer) computes the view's logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from amoeba_search.extract import extract
    from amoeba_search.gguf_export import write_gguf
    from amoeba_search.models import embedded_gguf
    from amoeba_search.resources import shipped_strategy
    from amoeba_search.selection.strategy import Strategy
    from amoeba_search.selection.width import heterogeneous_subnet

    shapes = [(9, 1536), (9, 1152), (0, 1536), (6, 768), (0, 0), (3, 384)] * 5
    subnet = heterogeneous_subnet(smol.model, Strategy.load(shipped_strategy()).width, shapes)
    ids = smol.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad(), subnet_view(smol.model, subnet) as view:
        expected = view(input_ids=ids).logits[0]
    checkpoint = load_model(str(extract(smol, subnet, tmp_path / "ckpt"))).model
    path = write_gguf(checkpoint, tmp_path / "het.gguf", embedded_gguf(), "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids[0].tolist())
    got = torch.tensor(llm.scores[:ids.shape[1]])
    assert (got - expected).abs().max().item() <= 1e-3


def test_demo_reuses_a_committed_profile_only_where_its_reference_kernels_agree(smol, monkeypatch, tmp_path):
    """A VM's CPU name can stand for several CPU generations: the demo reuses the committed profile of this name
    only when the reference kernels it recorded run at about the same speed here, else it profiles anew."""
    from rich.console import Console

    from amoeba_search import demo
    from amoeba_search.profiling.lut import LookupTable
    from amoeba_search.profiling.store import ProfileStore

    committed = LookupTable.load(ProfileStore().find("intel-xeon", "torch-eager"))
    env = committed.meta["environment"]
    assert env["torch"] == torch.__version__
    monkeypatch.setattr(demo, "default_device_slug", lambda: "intel-xeon")
    monkeypatch.setattr(demo, "device_name", lambda on="cpu": env["device_name"])
    monkeypatch.setattr(demo, "build_profile", lambda *args, **kwargs: "profiled anew")
    threads = torch.get_num_threads()
    torch.set_num_threads(env["torch_threads"])
    try:
        console = Console(record=True, width=200)
        monkeypatch.setattr(demo, "speed_changes", lambda environment: [("a reference matmul", 10.5, 10.0, 5.0)])
        assert isinstance(demo.demo_profile(console, smol, tmp_path), LookupTable)
        monkeypatch.setattr(demo, "speed_changes", lambda environment: [("a reference matmul", 13.0, 10.0, 30.0)])
        assert demo.demo_profile(console, smol, tmp_path) == "profiled anew"
        monkeypatch.setattr(demo, "speed_changes", lambda environment: [])        # nothing recorded to compare
        assert demo.demo_profile(console, smol, tmp_path) == "profiled anew"
    finally:
        torch.set_num_threads(threads)
    assert "its reference kernels run differently here (a reference matmul +30%)" in console.export_text()
