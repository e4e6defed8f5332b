"""Adapter checkpoints: router + experts (+ optimizer state for resuming) as safetensors beside a JSON record; no
pickle. Each checkpoint is a complete `step-NNNNNN/` directory moved into place atomically; the newest wins."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..artifacts import SCHEMA_VERSION, atomic_directory, environment, read_json, write_json_atomic
from ..errors import UserError
from ..models import LoadedModel, load_model
from ..resources import shipped_adapters
from ..selection.space import SearchSpace
from ..subnet import ModelDims
from .smol import AdapterConfig, SMoLAdapters

ADAPTERS_KIND = "amoeba_search.adapters"
RECORD, WEIGHTS, OPTIMIZER = "adapters.json", "adapters.safetensors", "optimizer.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in a run directory, oldest first (partial ones are hidden temp dirs)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if _STEP_DIR.match(p.name) and (p / RECORD).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name)[1]))


def resolve(path: Path) -> Path:
    """A checkpoint dir, or a run dir (its newest checkpoint)."""
    if (path / RECORD).is_file():
        return path
    found = checkpoints(path)
    if not found:
        raise UserError(f"no adapter checkpoint in {path}: train one with `amoeba finetune --out {path}`")
    return found[-1]


def save_checkpoint(run_dir: Path, adapters: SMoLAdapters, optimizer: torch.optim.Optimizer, record: dict,
                    keep: int = 2) -> Path:
    """Write step-N/ atomically, then drop all but the newest `keep` checkpoints."""
    target = run_dir / f"step-{record['step']:06d}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in adapters.state_dict().items()}, str(tmp / WEIGHTS))
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER))
        full = {"schema_version": SCHEMA_VERSION, "kind": ADAPTERS_KIND, **record, "optimizer_param_groups": groups,
                "environment": environment()}
        write_json_atomic(tmp / RECORD, full, indent=1)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


RECORD_FIELDS = {"model": dict, "adapter": dict, "space": dict}


def read_record(path: Path) -> dict:
    record = read_json(path / RECORD, "adapters", f"train adapters with `amoeba finetune --out {path}`")
    if not isinstance(record, dict) or record.get("kind") != ADAPTERS_KIND or record.get(
            "schema_version") != SCHEMA_VERSION:
        kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{path} is not a version-{SCHEMA_VERSION} adapters checkpoint (kind {kind!r})")
    wrong = [k for k, kind in RECORD_FIELDS.items() if not isinstance(record.get(k), kind)]
    if wrong:
        raise UserError(f"{path / RECORD} lacks or mistypes {wrong}: the checkpoint is damaged; retrain or restore it")
    return record


def build_adapters(loaded: LoadedModel, record: dict) -> SMoLAdapters:
    """Empty adapters of the recorded shape for this model; refuses adapters trained on another model."""
    if record["model"] != loaded.fingerprint:
        raise UserError(f"adapters were trained on model {record['model']}, not {loaded.fingerprint}: pass the "
                        "model they were trained on (--model) or train adapters for this one")
    config = AdapterConfig(**{**record["adapter"], "targets": tuple(record["adapter"]["targets"])})
    adapters = SMoLAdapters(ModelDims.from_config(loaded.model.config), SearchSpace.from_dict(record["space"]),
                            config, loaded.model)
    adapters.record = record
    return adapters


def load_adapters(loaded: LoadedModel, path: Path) -> SMoLAdapters:
    """Adapters ready to evaluate (eval mode: no router noise), with an id derived from their weights."""
    path = resolve(Path(path))
    try:
        adapters = build_adapters(loaded, read_record(path))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path / RECORD} describes no adapters this version can build ({type(exc).__name__}: "
                        f"{exc}): retrain them") from None
    weights = path / WEIGHTS
    try:
        adapters.load_state_dict(load_file(str(weights)))
    except Exception as exc:     # truncated or foreign safetensors, or tensors of other shapes: a damaged checkpoint
        raise UserError(f"adapter weights {weights} are unreadable or do not match their record "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}): retrain or "
                        "restore them") from None
    adapters.fingerprint = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    adapters.path = path
    return adapters.eval()


def load_model_and_adapters(model: str, adapters: str | Path | None = None, dtype: str = "auto") -> LoadedModel:
    """A model by name or path, with fine-tuned adapters attached when given (they are checked against it);
    adapters 'default' are the ones shipped for the embedded model."""
    loaded = load_model(model, dtype)
    if adapters is not None:
        loaded.adapters = load_adapters(loaded, shipped_adapters_for(loaded) if str(adapters) == "default"
                                        else Path(adapters))
    return loaded


def shipped_adapters_for(loaded: LoadedModel) -> Path:
    path = shipped_adapters(loaded.name)
    if not (path / RECORD).is_file():
        raise UserError(f"no adapters are shipped for model {loaded.name!r}: train them with `amoeba finetune "
                        "--out DIR` and pass --adapters DIR")
    return path


def export_adapters(run_dir: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The newest checkpoint of a run as a small file set to ship or share: weights in `dtype` (bf16 halves them;
    they are added to fp32 weights at a scale where bf16's 3 significant digits are plenty), the record with its
    training history, no optimizer state. Loads like any checkpoint (`--adapters OUT`)."""
    source = resolve(Path(run_dir))
    record = read_record(source)
    record.pop("optimizer_param_groups", None)
    record["exported_from"] = {"checkpoint": str(source), "dtype": str(dtype).removeprefix("torch.")}
    with atomic_directory(Path(out_dir), overwrite=True) as tmp:
        tensors = load_file(str(source / WEIGHTS))
        save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        write_json_atomic(tmp / RECORD, record, indent=1)
    return Path(out_dir)


def restore(path: Path, adapters: SMoLAdapters, optimizer: torch.optim.Optimizer, record: dict) -> None:
    """Put a checkpoint's adapter weights and AdamW moments back, to resume training from it."""
    adapters.load_state_dict(load_file(str(path / WEIGHTS)))
    state: dict = {}
    for key, tensor in load_file(str(path / OPTIMIZER)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": record["optimizer_param_groups"]})


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {f"{index}.{name}": torch.as_tensor(value).detach().contiguous().cpu()
               for index, per_param in state_dict["state"].items() for name, value in per_param.items()}
    return tensors, state_dict["param_groups"]
