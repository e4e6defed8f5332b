"""GGUF through llama.cpp's own converter, for what amoeba's writer (gguf_export) leaves to it: other families than
llama, rope scaling (Llama 3's rope_freqs), and a model's own tokenizer (llama.cpp's pre-tokenizer detection). The
converter comes from the llama-cpp-python source release the project builds (`make llama-cpp`), so it matches the
llama.cpp that runs the file; it reads the extracted checkpoint dir, which is a standard HF checkpoint.

Only families whose converted subnets were checked against transformers' logits are converted (see
`CONVERTED_FAMILIES`); the others are refused with the reason, never written approximately."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import UserError
from .gguf_export import effective_window

CONVERTER_ENV = "AMOEBA_LLAMA_CPP_CONVERTER"
LLAMA_CPP_VERSION = "0.3.36"
# Families whose converted GGUF gave transformers' logits in llama.cpp (tests/test_families.py: tiny random
# models with norms and biases randomised, f32, <= 1e-3), within the limits `refusal` names.
CONVERTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma2", "gemma3_text")
# Families whose llama.cpp graph applies no sliding window: the GGUF's context is capped at the window.
WINDOWLESS = ("mistral", "qwen2", "phi3")
# Architectures whose llama.cpp graph sizes q_proj (and o_proj) as hidden x hidden: they cannot hold fewer heads.
FIXED_Q_WIDTH = ("phi3",)
# Qwen2 is Llama with q/k/v biases: a subnet with fewer heads than its own llama.cpp graph holds (q fixed at
# hidden x hidden) is converted as llama, whose graph sizes q by heads x head_dim and loads those biases.
AS_LLAMA = ("qwen2",)
# Gemma's llama.cpp graphs (src/models/gemma2.cpp, gemma3.cpp): the output layer is the token embedding, no
# attention bias, and the query scale 1/sqrt(head_dim) except at the 27B model's layer count, where it is
# 1/sqrt(hidden / heads); transformers scales by query_pre_attn_scalar**-0.5.
GEMMA_ARCHS = {"gemma2": ("gemma2", 46), "gemma3_text": ("gemma3", 62)}


def _gemma_refusal(config, small) -> str | None:
    """What llama.cpp's gemma2 / gemma3 graph cannot hold of the subnet config `small` of a `config` model."""
    arch, layers_27b = GEMMA_ARCHS[config.model_type]
    if not small.tie_word_embeddings:
        return f"llama.cpp's {arch} uses the token embedding as its output layer: an untied lm_head cannot be held"
    if getattr(small, "attention_bias", False):
        source = ("the model's own" if getattr(config, "attention_bias", False) else
                  "FLAP's bias compensation on o_proj: make the subnet with `--no-compensate`")
        return f"llama.cpp's {arch} has no attention biases ({source})"
    scale_dim = (small.hidden_size // small.num_attention_heads if small.num_hidden_layers == layers_27b
                 else small.head_dim)
    if abs(scale_dim - small.query_pre_attn_scalar) > 1e-6 * scale_dim:
        return (f"llama.cpp's {arch} scales queries by 1/sqrt({scale_dim}) in a {small.num_hidden_layers}-layer "
                f"model, transformers by 1/sqrt(query_pre_attn_scalar = {small.query_pre_attn_scalar})")
    if arch == "gemma2" and "sliding_attention" not in (getattr(small, "layer_types", None) or ["sliding_attention"]):
        return "llama.cpp's gemma2 needs a sliding-window layer and this subnet keeps full-attention layers only"
    softcap = getattr(small, "attn_logit_softcapping", None)
    if arch == "gemma2" and (softcap is None or getattr(small, "final_logit_softcapping", None) is None):
        return "llama.cpp's gemma2 always softcaps attention and final logits; this config leaves one uncapped"
    if arch == "gemma3" and softcap is not None:
        return "llama.cpp's gemma3 applies no attention-logit softcapping"
    if arch == "gemma3" and _rope(small, "sliding_attention").get("rope_type", "default") != "default":
        return "llama.cpp's gemma3 applies no rope scaling on sliding-window layers"
    return None


def _rope(config, layer_type: str) -> dict:
    """The rope parameters of one layer type (transformers 5 keeps one dict per type, or one for all)."""
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get(layer_type, rope)


def extra_metadata(config) -> dict[str, tuple | None]:
    """GGUF keys the converter leaves out or gets wrong for a subnet (config `config`), key ("{arch}" for the
    file's architecture) -> (value, GGUF type), or None to remove the key.

    Mistral, Qwen2, Phi-3: llama.cpp's graphs apply no sliding window (logits 5-8 away beyond the window on tiny
    windowed subnets), so the context is capped at the window, within which a window changes nothing (as
    amoeba's own writer does). Gemma (`config.layer_types`, remapped when layers are dropped): the per-layer
    sliding/full pattern, which llama.cpp reads as a bool array in place of its fixed period (2 for Gemma 2, 6 for
    Gemma 3), and Gemma 3's sliding-layer rope base; a Gemma 3 subnet of full layers only loses its window
    (llama.cpp asserts a windowed model has a sliding layer)."""
    from gguf import GGUFValueType

    if config.model_type in WINDOWLESS:
        window = effective_window(config)
        return {} if window is None else {"{arch}.context_length": (window, GGUFValueType.UINT32)}
    if config.model_type not in GEMMA_ARCHS or not getattr(config, "layer_types", None):
        return {}
    pattern = [kind == "sliding_attention" for kind in config.layer_types]
    if not any(pattern):
        return {"{arch}.attention.sliding_window": None}
    keys = {"{arch}.attention.sliding_window_pattern": (pattern, GGUFValueType.ARRAY)}
    if config.model_type == "gemma3_text":
        theta = float(_rope(config, "sliding_attention").get("rope_theta", 10000.0))
        keys["{arch}.rope.freq_base_swa"] = (theta, GGUFValueType.FLOAT32)
    return keys


OUTTYPES = {"f32": "f32", "f16": "f16", "q8_0": "q8_0", "q4_1": "f16"}   # q4_1: f16 then llama.cpp's quantizer


def converter() -> Path:
    """convert_hf_to_gguf.py of llama.cpp: $AMOEBA_LLAMA_CPP_CONVERTER, or where `make llama-cpp` puts it."""
    default = Path.home() / ".cache" / "amoeba_search" / f"llama-cpp-convert-{LLAMA_CPP_VERSION}"
    path = Path(os.environ.get(CONVERTER_ENV, default)) / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise UserError(f"llama.cpp's converter is not installed ({path} missing): run `make llama-cpp`, or set "
                        f"{CONVERTER_ENV} to a llama.cpp checkout")
    return path


def refusal(config, small) -> str | None:
    """Why llama.cpp's converter would not give exactly the subnet whose config is `small` (extract.subnet_config)
    of a `config` model; None when it does."""
    from .families.base import family_of

    model_type = family_of(config).model_type
    if model_type not in CONVERTED_FAMILIES:
        return "not verified against llama.cpp"
    if model_type in GEMMA_ARCHS:
        return _gemma_refusal(config, small)
    if model_type in FIXED_Q_WIDTH and small.num_attention_heads < config.num_attention_heads:
        return (f"llama.cpp's {model_type} fixes q_proj at hidden x hidden and refuses a subnet with fewer heads: keep "
                "every head (--min-heads = the model's head count)")
    return None


def check_convertible(config, small) -> None:
    """Refuse before any work a subnet (config `small`) whose conversion is not known to be exact."""
    reason = refusal(config, small)
    if reason is not None:
        raise UserError(f"GGUF for this {config.model_type} subnet is not written: {reason}; use the extracted HF "
                        "checkpoint")
    converter()


def convert(checkpoint: Path, out: Path, weight_type: str) -> Path:
    """checkpoint dir -> GGUF at `out` (atomic), weights in f32 / f16 / q8_0 / q4_1."""
    from transformers import AutoConfig

    if weight_type not in OUTTYPES:
        raise UserError(f"GGUF weight type {weight_type!r}: choose from {', '.join(OUTTYPES)}")
    tmp = out.with_name(f".{out.name}.tmp")
    edited = out.with_name(f".{out.name}.meta.tmp")
    stage = out.with_name(f".{out.name}.llama")
    config = AutoConfig.from_pretrained(checkpoint)
    source = checkpoint
    if config.model_type in AS_LLAMA and config.num_attention_heads * config.head_dim != config.hidden_size:
        source = _staged_as_llama(checkpoint, stage)
    command = [sys.executable, str(converter()), str(source), "--outfile", str(tmp),
               "--outtype", OUTTYPES[weight_type]]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise UserError(f"llama.cpp's converter failed on {checkpoint}: {lines[-1] if lines else 'no output'}")
        extra = extra_metadata(config)
        if extra:
            add_metadata(tmp, edited, extra)
            os.replace(edited, tmp)
        if weight_type == "q4_1":
            quantize(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        edited.unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _staged_as_llama(checkpoint: Path, stage: Path) -> Path:
    """The checkpoint's files (linked) with a config naming the llama architecture, for the converter."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for item in checkpoint.iterdir():
        if item.name != "config.json":
            (stage / item.name).symlink_to(item.resolve())
    values = json.loads((checkpoint / "config.json").read_text())
    values.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (stage / "config.json").write_text(json.dumps(values, indent=2))
    return stage


def add_metadata(source: Path, out: Path, keys: dict[str, tuple | None]) -> None:
    """Copy a GGUF with keys ("{arch}" filled in) added, replaced or (None) removed (gguf-py's own
    gguf_new_metadata copier)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    keys = {key.format(arch=arch): entry for key, entry in keys.items()}
    details = {key: MetadataDetails(entry[1], entry[0]) for key, entry in keys.items() if entry is not None}
    removed = [key for key, entry in keys.items() if entry is None]
    copy_with_new_metadata(reader, gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess), details, removed)


def quantize(source: Path, out: Path) -> None:
    """llama.cpp's own quantizer (through llama-cpp-python) from an f16 GGUF to Q4_1."""
    import ctypes
    import logging

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    tmp = out.with_name(f".{out.name}.q.tmp")
    log = logging.getLogger("llama-cpp-python")       # llama-cpp-python's log: its per-tensor lines, errors kept
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise UserError(f"llama.cpp could not quantize {source} to q4_1")
        os.replace(tmp, out)
    finally:
        log.setLevel(level)
        tmp.unlink(missing_ok=True)
