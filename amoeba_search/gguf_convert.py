"""GGUF through llama.cpp's own converter, for what amoeba's writer (gguf_export) leaves to it: other families than
llama, rope scaling (Llama 3's rope_freqs), and a model's own tokenizer (llama.cpp's pre-tokenizer detection). The
converter comes from the llama-cpp-python source release the project builds (`make llama-cpp`), so it matches the
llama.cpp that runs the file; it reads the extracted checkpoint dir, which is a standard HF checkpoint.

Only families whose converted subnets were checked against transformers' logits are converted (see
`CONVERTED_FAMILIES`); the others are refused with the reason, never written approximately."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .errors import UserError

CONVERTER_ENV = "AMOEBA_LLAMA_CPP_CONVERTER"
LLAMA_CPP_VERSION = "0.3.36"
# Families whose converted GGUF gave transformers' logits in llama.cpp (tests/test_families.py: tiny random
# models with norms and biases randomised, f32, <= 1e-3), within the limits `refusal` names.
CONVERTED_FAMILIES = ("llama", "qwen2", "qwen3", "phi3", "olmo2")
# Why the others are not converted (measured with llama.cpp 0.3.36's converter and runtime).
NOT_CONVERTED = {
    "mistral": "llama.cpp's llama architecture has no sliding window (its converter drops it; logits differ beyond "
               "the window): amoeba's own writer caps the context at the window instead",
    "gemma3_text": "llama.cpp's gemma3 gave logits up to 3.2 away from transformers' on a tiny Gemma 3 subnet",
    "gemma2": "llama.cpp's gemma2 gave logits 6.6 away from transformers' within the window on a tiny Gemma 2 "
              "subnet",
}
# Architectures whose llama.cpp form sizes q_proj (and o_proj) as hidden x hidden: they cannot hold fewer heads.
FIXED_Q_WIDTH = ("qwen2", "phi3")


def _window(config) -> int | None:
    """The sliding window a Qwen2 / Phi-3 config really applies (None: none, or one longer than its context)."""
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None
    window = getattr(config, "sliding_window", None)
    return window if window and window < config.max_position_embeddings else None


OUTTYPES = {"f32": "f32", "f16": "f16", "q8_0": "q8_0", "q4_1": "f16"}   # q4_1: f16 then llama.cpp's quantizer


def converter() -> Path:
    """convert_hf_to_gguf.py of llama.cpp: $AMOEBA_LLAMA_CPP_CONVERTER, or where `make llama-cpp` puts it."""
    default = Path.home() / ".cache" / "amoeba_search" / f"llama-cpp-convert-{LLAMA_CPP_VERSION}"
    path = Path(os.environ.get(CONVERTER_ENV, default)) / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise UserError(f"llama.cpp's converter is not installed ({path} missing): run `make llama-cpp`, or set "
                        f"{CONVERTER_ENV} to a llama.cpp checkout")
    return path


def refusal(config, heads_pruned: bool) -> str | None:
    """Why llama.cpp's converter would not give this subnet of a `config` model exactly; None when it does."""
    from .families.base import family_of

    model_type = family_of(config).model_type
    if model_type not in CONVERTED_FAMILIES:
        return NOT_CONVERTED.get(model_type, "not verified")
    if model_type in FIXED_Q_WIDTH and _window(config) is not None:
        return (f"llama.cpp's {model_type} applies no sliding window of {_window(config)} (logits 5-8 away from "
                "transformers' beyond the window on tiny windowed subnets)")
    if model_type in FIXED_Q_WIDTH and heads_pruned:
        return (f"llama.cpp's {model_type} fixes q_proj at hidden x hidden and refuses a subnet with fewer heads: keep "
                "every head (--min-heads = the model's head count)")
    return None


def check_convertible(config, heads_pruned: bool) -> None:
    """Refuse before any work a subnet whose conversion is not known to be exact."""
    reason = refusal(config, heads_pruned)
    if reason is not None:
        raise UserError(f"GGUF for this {config.model_type} subnet is not written: {reason}; use the extracted HF "
                        "checkpoint")
    converter()


def convert(checkpoint: Path, out: Path, weight_type: str) -> Path:
    """checkpoint dir -> GGUF at `out` (atomic), weights in f32 / f16 / q8_0 / q4_1."""
    if weight_type not in OUTTYPES:
        raise UserError(f"GGUF weight type {weight_type!r}: choose from {', '.join(OUTTYPES)}")
    tmp = out.with_name(f".{out.name}.tmp")
    command = [sys.executable, str(converter()), str(checkpoint), "--outfile", str(tmp),
               "--outtype", OUTTYPES[weight_type]]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise UserError(f"llama.cpp's converter failed on {checkpoint}: {lines[-1] if lines else 'no output'}")
        if weight_type == "q4_1":
            quantize(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def quantize(source: Path, out: Path) -> None:
    """llama.cpp's own quantizer (through llama-cpp-python) from an f16 GGUF to Q4_1."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    tmp = out.with_name(f".{out.name}.q.tmp")
    try:
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise UserError(f"llama.cpp could not quantize {source} to q4_1")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
