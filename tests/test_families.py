"""Contract over every registered model family: tiny random models of each (norm weights and biases randomised
so a dropped one shows) give, for depth-only, width-only and mixed subnets with and without FLAP compensation,
an extracted checkpoint (saved and loaded back by plain transformers) whose logits equal the in-place view's that
selection, search and evaluation score; evaluation equals the model's own forward (softcapping included); merged
adapters equal the adapted view. What a family cannot do exactly is refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from amoeba_search.errors import UserError
from amoeba_search.evaluate import token_logprobs
from amoeba_search.extract import extract_model
from amoeba_search.families import FAMILIES
from amoeba_search.families.base import family_of, model_dims
from amoeba_search.finetune.smol import AdapterConfig, SMoLAdapters
from amoeba_search.models import load_heterogeneous
from amoeba_search.profiling.flows.torch_eager import cache_argument
from amoeba_search.selection.space import SearchSpace
from amoeba_search.subnet import ModelDims, Subnet
from amoeba_search.view import subnet_view

SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
             eos_token_id=2, tie_word_embeddings=False)
# What makes each family itself: rope scaling, sliding windows, per-layer types, softcapping.
EXTRA = {
    "llama": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "qwen3": dict(),
    "gemma2": dict(sliding_window=8, final_logit_softcapping=5.0, attn_logit_softcapping=10.0,
                   query_pre_attn_scalar=16),
    "gemma3_text": dict(sliding_window=8, sliding_window_pattern=2, query_pre_attn_scalar=16),
    "phi3": dict(),
    "olmo2": dict(),
}
FAMILY_NAMES = FAMILIES.names()


def test_every_family_is_covered_here():
    assert sorted(EXTRA) == FAMILY_NAMES


def tiny_family_model(model_type: str, seed: int = 0):
    return tiny_family_model_with_vocab(model_type, SIZES["vocab_size"], seed)


def tiny_family_model_with_vocab(model_type: str, vocab_size: int, seed: int = 0, overrides: dict | None = None):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**SIZES, "vocab_size": vocab_size, **EXTRA[model_type],
                                                 **(overrides or {})})
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0, 0.15)
            else:                          # norms and biases: randomised so a dropped or misplaced one shows
                param.add_(torch.randn_like(param) * 0.3)
    return model


def subnets(model) -> dict[str, Subnet]:
    """Subnets any GQA model could take (built without the family's head-count filter, so a family that cannot
    remove heads gets one and must refuse it)."""
    dims = ModelDims.from_config(model.config)
    heads = 2 if 2 in model_dims(model.config).head_counts() else dims.num_heads
    per_layer = Subnet((0, 1, 3), ((0, 1, 2, 3), (), tuple(range(heads))), (tuple(range(8)), tuple(range(48)),
                                                                         tuple(range(0, 48, 2))))
    return {"depth": Subnet.uniform(dims, [0, 2, 3]), "width": Subnet.uniform(dims, range(4), heads=2, mlp=24),
            "mixed": Subnet.uniform(dims, [1, 3], heads=heads, mlp=16), "mlp": Subnet.uniform(dims, [0, 1, 3], mlp=8),
            "per-layer": per_layer}


def compensated(model, subnet: Subnet) -> Subnet:
    generator = torch.Generator().manual_seed(1)
    hidden = model.config.hidden_size
    bias = tuple((tuple(torch.randn(hidden, generator=generator).mul(0.2 if heads else 0.0).tolist()),
                  tuple(torch.randn(hidden, generator=generator).mul(0.2 if channels else 0.0).tolist()))
                 for heads, channels in zip(subnet.heads, subnet.mlp_channels))
    return Subnet(subnet.layers, subnet.heads, subnet.mlp_channels, bias)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_extracted_checkpoint_equals_the_view(model_type, tmp_path):
    model = tiny_family_model(model_type)
    family = family_of(model.config)
    ids = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))   # longer than the windows
    checked = 0
    for shape, plain in subnets(model).items():
        for compensate in (False, True):
            subnet = compensated(model, plain) if compensate else plain
            narrowed_heads = any(len(h) < model.config.num_attention_heads for h in subnet.heads)
            if narrowed_heads and family.head_pruning_refusal:
                with pytest.raises(UserError, match="heads cannot be removed exactly"):
                    extract_model(model, subnet)
                with pytest.raises(UserError, match="heads cannot be removed exactly"), subnet_view(model, subnet):
                    pass
                continue
            if family.heads_from_config and len({len(h) for h in subnet.heads}) > 1:
                with pytest.raises(UserError, match="same number of heads"):
                    extract_model(model, subnet)
                continue
            needs = [name for name, part in ((family.attention_out, 0), (family.mlp_out, 1))
                     if compensate and any(any(b[part]) for b in subnet.bias)]
            if any(name not in family.bias_flags for name in needs):
                with pytest.raises(UserError, match="--no-compensate"):
                    extract_model(model, subnet)
                continue
            with torch.no_grad(), subnet_view(model, subnet) as view:
                in_place = view(input_ids=ids).logits
            small = extract_model(model, subnet)
            small.save_pretrained(tmp_path / f"{shape}-{compensate}")
            if subnet.uniform_shape(ModelDims.from_config(model.config)):
                loaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"{shape}-{compensate}").eval()
            else:        # per-layer widths (an MLP-only layer among them): amoeba's loader builds each block
                loaded = load_heterogeneous(tmp_path / f"{shape}-{compensate}",
                                            AutoConfig.from_pretrained(tmp_path / f"{shape}-{compensate}"), "auto")[0]
            assert (logits_of(loaded, ids) - in_place).abs().max().item() <= 1e-4, (shape, compensate)
            checked += 1
    assert checked >= 3
    assert torch.equal(logits_of(model, ids), logits_of(tiny_family_model(model_type), ids))  # view restored


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_evaluation_scores_what_the_model_computes(model_type):
    """The scoring path (base model + LM head on scored positions) equals the model's own forward, softcapping
    and logit scaling included."""
    model = tiny_family_model(model_type)
    ids = torch.randint(3, 96, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        scored = token_logprobs(model, hidden, ids[0, 1:])
        reference = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(
            1, ids[0, 1:, None]).squeeze(1)
    assert (scored - reference).abs().max().item() <= 1e-5


def incremental_logits(model, ids, prompt_tokens: int = 4):
    """Logits of every position from cached decoding (a prompt, then one token per step): what `generate` and the
    served subnet compute, through each family's cache (sliding windows and remapped layer types included)."""
    keyword = cache_argument(model)
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt_tokens], use_cache=True)
        steps = [out.logits]
        for t in range(prompt_tokens, ids.shape[1]):
            cache = getattr(out, "cache", None) or out.past_key_values
            out = model(input_ids=ids[:, t:t + 1], use_cache=True, **{keyword: cache})
            steps.append(out.logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_cached_decoding_of_extracted_subnets_equals_their_full_forward(model_type):
    """A dropped layer must not shift which layers slide or which cache a layer uses: decoding past the window
    with the cache equals one full forward, for every subnet shape the family can extract (a kept attention module
    with a stale `layer_idx` would share another layer's cache slot: 5.1 logits apart on Llama)."""
    model = tiny_family_model(model_type)
    ids = torch.randint(3, 96, (1, 24), generator=torch.Generator().manual_seed(5))   # 3x the sliding windows
    checked = 0
    for shape, subnet in subnets(model).items():
        try:
            small = extract_model(model, subnet)
        except UserError:            # a shape the family refuses (checked in the test above)
            continue
        assert (incremental_logits(small, ids) - logits_of(small, ids)).abs().max().item() <= 1e-4, shape
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_merged_adapters_equal_the_adapted_view(model_type):
    model = tiny_family_model(model_type)
    dims = model_dims(model.config)
    subnet = subnets(model)["mixed"]
    space = SearchSpace((2, 3, 4), tuple(dims.head_counts()), (16, 24, 48))
    adapters = SMoLAdapters(dims, space, AdapterConfig(experts=2, top_k=1, rank=2), model).eval()
    torch.manual_seed(4)
    for name, param in adapters.named_parameters():
        if name.endswith(".B"):
            param.data.normal_(0, 0.05)
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), adapters.applied(model, subnet) as view:
        adapted = view(input_ids=ids).logits
    merged = tiny_family_model(model_type)
    adapters.merge_into(merged, subnet)
    assert (logits_of(extract_model(merged, subnet), ids) - adapted).abs().max().item() <= 1e-4


def test_head_counts_follow_the_family_config():
    """LLaMA's config requires hidden % heads == 0, Qwen2's does not; OLMo-2 keeps every head."""
    odd = {**SIZES, "hidden_size": 66, "num_attention_heads": 6, "num_key_value_heads": 3}   # 66 % 4 != 0
    assert model_dims(AutoConfig.for_model("llama", **odd)).head_counts() == [2, 3, 6]
    assert model_dims(AutoConfig.for_model("qwen2", **odd)).head_counts() == [2, 3, 4, 6]
    assert model_dims(AutoConfig.for_model("olmo2", **SIZES)).head_counts() == [4]


def test_an_unknown_architecture_is_refused_with_the_supported_list():
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(UserError, match="model type 'gpt2' is not supported.*llama"):
        family_of(config)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_gguf_writes_what_llama_cpp_computes_or_refuses(model_type, tmp_path):
    """The GGUF writer takes the llama-architecture families (Mistral capped at its sliding window) and
    llama.cpp computes their logits; every other family, and rope scaling, is refused with the converter fix."""
    from amoeba_search.gguf_export import check_gguf, gguf_context_length, write_gguf

    model = tiny_family_model(model_type)
    if family_of(model.config).gguf_arch != "llama" or model_type == "llama":     # the tiny Llama-3 has llama3 rope
        with pytest.raises(UserError, match="convert_hf_to_gguf"):
            check_gguf(model.config)
        return
    assert gguf_context_length(model.config) == 8
    llama_cpp = pytest.importorskip("llama_cpp")
    small = extract_model(model, subnets(model)["mixed"])
    path = write_gguf(small, tmp_path / "m.gguf", None, "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=8, n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
    ids = [5, 17, 60, 3, 42, 7, 11, 9]
    llm.eval(ids)
    with torch.no_grad():
        expected = small(torch.tensor([ids])).logits[0]
    assert torch.allclose(torch.tensor(llm.scores[: len(ids)]), expected, atol=1e-3)


def test_a_bf16_checkpoint_stays_bf16_through_loading_and_extraction(tmp_path):
    """Loading memory ~ the checkpoint's size in its own dtype: bf16 is neither widened to fp32 on load nor in
    the extracted checkpoint, unless asked."""
    from amoeba_search.extract import extract
    from amoeba_search.models import load_model
    from tests.conftest import build_tiny

    source = build_tiny(tmp_path / "fp32")
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(source).to(torch.bfloat16).save_pretrained(bf16)
    (bf16 / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            (bf16 / name).write_bytes((source / name).read_bytes())
    loaded = load_model(str(bf16))
    assert loaded.model.dtype == torch.bfloat16
    assert load_model(str(bf16), "float32").model.dtype == torch.float32
    out = extract(loaded, Subnet.uniform(ModelDims.from_config(loaded.model.config), [0, 1, 2, 3, 4]), tmp_path / "x")
    assert load_model(str(out)).model.dtype == torch.bfloat16
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))  # noqa: E731
    assert size(out) < 0.6 * size(source)
    with pytest.raises(UserError, match="--dtype 'int8'"):
        load_model(str(bf16), "int8")


RSS_PROBE = """
import json, re, sys
import torch, transformers  # noqa: F401  (imported before the baseline)
from amoeba_search.models import load_model

def peak_mib():   # this process's own high-water mark (ru_maxrss would carry a forking parent's across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

before = peak_mib()
loaded = load_model(sys.argv[1], sys.argv[2])
print(json.dumps({"delta_mib": peak_mib() - before, "dtype": str(loaded.model.dtype)}))
"""


def test_loading_memory_is_the_checkpoint_size_in_its_dtype(tmp_path):
    """Peak resident memory of `load_model` on a 48M-parameter bf16 checkpoint (93 MiB): no more than its size in
    its own dtype (auto), about twice that when fp32 is asked for (the probe can tell the two apart)."""
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import byte_tokenizer

    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    byte_tokenizer().save_pretrained(tmp_path / "bf16")
    size_mib = sum(p.stat().st_size for p in (tmp_path / "bf16").glob("*.safetensors")) / 2**20
    peak = {}
    for dtype in ("auto", "float32"):
        run = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path / "bf16"), dtype], capture_output=True,
                             text=True, check=True)
        peak[dtype] = json.loads(run.stdout.strip().splitlines()[-1])
    assert peak["auto"]["dtype"] == "torch.bfloat16" and peak["float32"]["dtype"] == "torch.float32"
    assert peak["auto"]["delta_mib"] <= 1.2 * size_mib, (peak, size_mib)
    assert peak["float32"]["delta_mib"] >= 1.6 * size_mib, (peak, size_mib)


def converter_vocabulary(name: str) -> Path:
    """A vocabulary GGUF from llama.cpp's test models (`make llama-cpp` puts it beside the converter)."""
    from amoeba_search.gguf_convert import converter

    try:
        path = converter().parent / "models" / name
    except UserError:
        pytest.skip("llama.cpp's converter is not installed (make llama-cpp)")
    if not path.is_file():
        pytest.skip(f"{path} missing: run `make llama-cpp`")
    return path


def sentencepiece_model(vocabulary: Path, out: Path, pieces: int = 32000) -> Path:
    """A SentencePiece tokenizer.model holding a SentencePiece vocabulary GGUF's first `pieces` tokens and scores
    (what Phi-3's converter reads; the GGUF's own token types are llama.cpp test quirks, so: <unk>, two controls,
    byte pieces, normal pieces)."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as sp

    fields = GGUFReader(str(vocabulary)).fields
    tokens, scores, kinds = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    piece_type = sp.ModelProto.SentencePiece
    proto = sp.ModelProto()
    proto.trainer_spec.model_type, proto.trainer_spec.vocab_size = sp.TrainerSpec.BPE, pieces
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", True
    proto.normalizer_spec.remove_extra_whitespaces = False
    for i in range(pieces):
        piece = proto.pieces.add()
        piece.piece = bytes(tokens.parts[tokens.data[i]]).decode("utf-8")
        piece.score = float(scores.parts[scores.data[i]][0])
        piece.type = (piece_type.UNKNOWN if i == 0 else piece_type.CONTROL if i < 3 else piece_type.BYTE
                      if int(kinds.parts[kinds.data[i]][0]) == 6 else piece_type.NORMAL)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    return out / "tokenizer.model"


def context_length(path: Path) -> int:
    """The context length a GGUF declares."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return int(fields[f"{fields['general.architecture'].contents()}.context_length"].contents())


def tokenizer_fields(path: Path) -> dict:
    """A GGUF's tokenizer.* metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {name: field.contents() for name, field in fields.items() if name.startswith("tokenizer.")}


class GgmlCpuGelu(torch.nn.Module):
    """ggml's CPU GELU (ggml-cpu/vec.h, GGML_GELU_FP16): the input rounded to fp16 looks up an fp16 table of the
    tanh GELU; exact 0 / x beyond -10 / 10."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        table = self.act(x.half().float()).half().float()
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def with_ggml_cpu_gelu(model) -> bool:
    """Swap a GELU model's MLP activations for ggml's CPU table (True), so llama.cpp's logits can be compared
    with the network it really computes; a SiLU model is left alone (False)."""
    activation = getattr(model.config, "hidden_activation", None) or model.config.hidden_act
    if "gelu" not in activation:
        return False
    for module in list(model.modules()):
        if hasattr(module, "act_fn") and not isinstance(module.act_fn, GgmlCpuGelu):
            module.act_fn = GgmlCpuGelu(module.act_fn)
    return True


# Qwen2 as Qwen2.5 ships it (no sliding window) besides the windowed tiny config; Phi-3 with a window; Mistral
# without one (v0.2 on) besides the windowed tiny config (windowed: context capped at the window); Gemma as released
# (tied embeddings: llama.cpp's Gemma output layer is the token embedding) besides the untied tiny config.
CONVERTER_CASES = ([(name, {}) for name in FAMILY_NAMES] + [("qwen2", {"use_sliding_window": False}),
                                                            ("phi3", {"sliding_window": 8}),
                                                            ("mistral", {"sliding_window": None})]
                   + [(name, {"tie_word_embeddings": True}) for name in ("gemma2", "gemma3_text")])


@pytest.mark.embedded
@pytest.mark.parametrize("model_type, overrides", CONVERTER_CASES,
                         ids=[f"{t}{'-' + '-'.join(o) if o else ''}" for t, o in CONVERTER_CASES])
def test_llama_cpps_converter_writes_the_subnets_it_is_trusted_with(model_type, overrides, tmp_path):
    """llama.cpp's own converter on extracted subnets (with a real tokenizer: the embedded model's BPE, or
    SentencePiece where the family's converter reads only that): what it is trusted with gives transformers' logits
    in llama.cpp (f32, <= 1e-3, past Gemma's windows with its remapped sliding/full layers; within the context a
    windowless llama.cpp graph is capped at); the rest is refused with the reason (Phi-3 with fewer heads; Gemma:
    untied, or compensated)."""
    from transformers import AutoTokenizer

    from amoeba_search.extract import subnet_config
    from amoeba_search.gguf_convert import (WINDOWLESS, check_convertible, convert, converter, effective_window,
                                            refusal)
    from amoeba_search.models import default_checkpoint_dir

    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint_dir())
    if model_type == "qwen2":          # its converter accepts Qwen2's own pre-tokenizer only: llama.cpp's copy of it
        vocabulary = converter_vocabulary("ggml-vocab-qwen2.gguf")
        tokenizer = AutoTokenizer.from_pretrained(vocabulary.parent, gguf_file=vocabulary.name)
    spm = None
    if model_type in ("phi3", "gemma2"):   # their converters read a SentencePiece tokenizer.model: Llama 2's
        spm = sentencepiece_model(converter_vocabulary("ggml-vocab-phi-3.gguf"), tmp_path / "spm")
    vocab_size = len(tokenizer)
    if spm:                                # Phi-3's 32000 pieces + its 64 added tokens; Gemma 2's pieces only
        vocab_size = 32064 if model_type == "phi3" else 32000
    model = tiny_family_model_with_vocab(model_type, vocab_size, overrides=overrides)
    ids = [5, 17, 60, 3, 42, 7, 11, 9, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 11, 12, 13, 14, 15, 16]
    converted, vocabularies = 0, []
    # A variant (window, tied embeddings) changes no shape handling: depth and MLP width are enough for it, and each
    # conversion is a llama.cpp converter run (~10-45 s here), the bulk of this test's time.
    for shape in ("depth", "mlp") if overrides else ("depth", "mlp", "mixed", "compensated"):
        subnet = subnets(model)["depth" if shape == "compensated" else shape]
        if shape == "compensated":
            subnet = compensated(model, subnet)
        try:
            small = subnet_config(model.config, subnet)
        except UserError:                        # a bias the family cannot hold: refused at extraction already
            continue
        if refusal(model.config, small) is not None:
            with pytest.raises(UserError, match="is not written"):
                check_convertible(model.config, small)
            continue
        try:
            converter()
        except UserError:
            pytest.skip("llama.cpp's converter is not installed (make llama-cpp)")
        llama_cpp = pytest.importorskip("llama_cpp")
        try:
            extracted = extract_model(model, subnet)
        except UserError:                         # OLMo-2 keeps every head (test_extracted_checkpoint_equals_the_view)
            continue
        extracted.save_pretrained(tmp_path / shape)
        if spm:
            shutil.copy(spm, tmp_path / shape / "tokenizer.model")
        else:
            tokenizer.save_pretrained(tmp_path / shape)
        path = convert(tmp_path / shape, tmp_path / f"{shape}.gguf", "f32")
        context = context_length(path)           # windowed Mistral / Qwen2 / Phi-3: capped at the window
        capped = effective_window(model.config) if model_type in WINDOWLESS else None
        assert context == (capped or model.config.max_position_embeddings)
        llm = llama_cpp.Llama(str(path), n_ctx=32, n_threads=1, logits_all=True, verbose=False, type_k=0, type_v=0)
        tokens = ids[:context]
        llm.eval(tokens)
        got = torch.tensor(llm.scores[: len(tokens)])
        with torch.no_grad():
            expected = extracted(torch.tensor([tokens])).logits[0]
            if with_ggml_cpu_gelu(extracted):       # Gemma: llama.cpp's CPU GELU is a table (2e-3 from exact)
                assert (got - expected).abs().max() <= 5e-3, shape
                expected = extracted(torch.tensor([tokens])).logits[0]
        assert torch.allclose(got, expected, atol=1e-3), shape
        vocabularies.append(tokenizer_fields(path))     # the same tokenizer whichever graph holds the subnet
        converted += 1
    assert all(vocabulary == vocabularies[0] for vocabulary in vocabularies)
    full = subnet_config(model.config, Subnet.uniform(ModelDims.from_config(model.config), range(4)))
    assert converted >= 2 or refusal(model.config, full) is not None       # depth and MLP width at least


def test_extraction_keeps_the_sentencepiece_model_converters_read(tmp_path):
    """transformers 5 saves tokenizer.json only; llama.cpp's Gemma 2 and Phi-3 converters read tokenizer.model,
    so extraction copies it from the source checkpoint."""
    from amoeba_search.extract import extract
    from amoeba_search.models import load_model

    spm = sentencepiece_model(converter_vocabulary("ggml-vocab-phi-3.gguf"), tmp_path / "spm")
    model = tiny_family_model_with_vocab("gemma2", 32000, overrides={"tie_word_embeddings": True})
    model.save_pretrained(tmp_path / "full")
    shutil.copy(spm, tmp_path / "full" / "tokenizer.model")
    loaded = load_model(str(tmp_path / "full"))
    out = extract(loaded, subnets(model)["depth"], tmp_path / "small")
    assert (out / "tokenizer.model").read_bytes() == spm.read_bytes()
