"""`amoeba extract`: a subnet as a dense Hugging Face checkpoint (and a GGUF for llama.cpp)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DtypeOption, ModelOption, check_output, console, example, load, new_app, setup
from ..errors import UserError
from ..gguf_export import TYPES as GGUF_TYPES

app = new_app("")


@app.command(epilog=example("amoeba extract --subnet s.json --out ckpt/s",
                            "amoeba extract --subnet s.json --out ckpt/s --gguf q4_1 --overwrite"))
def extract(
    subnet_file: Path = typer.Option(..., "--subnet", "-s", help="Subnet JSON (from `amoeba subnet` or "
                                                                 "`amoeba search`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output checkpoint directory (must not exist)."),
    model: str = ModelOption,
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
    gguf: Optional[str] = typer.Option(None, help=f"Also write OUT/model.gguf for llama.cpp with weights in "
                                                  f"{', '.join(GGUF_TYPES)}: amoeba's writer for the embedded "
                                                  "model, llama.cpp's converter (`make llama-cpp`) for the families "
                                                  "checked exact with it; others are refused first."),
    adapters: Optional[Path] = typer.Option(None, "--adapters", help="Merge these fine-tuned adapters (the subnet's "
                                                                     "gate-mixed LoRA) into the extracted weights; "
                                                                     "'default' = the shipped ones."),
    dtype: str = DtypeOption,
) -> None:
    """Write the subnet as a dense HF checkpoint that plain `AutoModelForCausalLM.from_pretrained` loads."""
    setup(None)
    if gguf is not None and gguf not in GGUF_TYPES:
        raise UserError(f"--gguf {gguf!r}: choose from {', '.join(GGUF_TYPES)}")
    check_output(out, directory=True)
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} already exists: choose another --out or pass --overwrite")
    from ..artifacts import dir_mib
    from ..models import torch_dtype
    from ..extract import extract as extract_checkpoint
    from ..subnet import ModelDims, Subnet

    torch_dtype(dtype)
    loaded = load(model, adapters, dtype)
    dims = ModelDims.from_config(loaded.model.config)
    spec = Subnet.load(subnet_file, dims, loaded.fingerprint)
    plan = gguf_plan(loaded, spec, dims) if gguf is not None else None  # refusals first
    with console.status("extracting"):
        path = extract_checkpoint(loaded, spec, out, overwrite=overwrite)
    if plan is not None:
        from ..gguf_convert import convert
        from ..gguf_export import write_gguf
        from ..models import load_model

        writer, tokenizer_gguf = plan
        with console.status(f"writing {path / 'model.gguf'} ({gguf}, {writer})"):
            if writer == "amoeba":
                write_gguf(load_model(str(path)).model, path / "model.gguf", tokenizer_gguf, gguf)
            else:
                convert(path, path / "model.gguf", gguf)
    loader = (f"AutoModelForCausalLM.from_pretrained('{path}')" if spec.uniform_shape(dims) else
              f"amoeba_search.models.load_model('{path}') or `amoeba evaluate --model {path}` (per-layer widths: "
              "plain from_pretrained cannot build it)")
    console.print(f"wrote {path} ({spec.summary(dims)}, {dir_mib(path):.1f} MiB); load it with {loader}"
                  + (" or llama.cpp (model.gguf)" if gguf else ""))


def gguf_plan(loaded, spec, dims) -> tuple[str, Path | None]:
    """Who writes the GGUF: amoeba's writer for the embedded model's llama-architecture subnets (its tokenizer is
    copied from the embedded GGUF; per-layer widths as llama.cpp's `deci` architecture), else llama.cpp's own
    converter for the families checked exact with it (uniform widths only); any other case is refused here,
    before extraction."""
    from ..extract import subnet_config
    from ..gguf_convert import check_convertible
    from ..gguf_export import check_gguf, gguf_vocab_size
    from ..models import DEFAULT_MODEL, embedded_gguf

    if loaded.name == DEFAULT_MODEL and gguf_vocab_size(embedded_gguf()) == loaded.model.config.vocab_size:
        check_gguf(loaded.model.config)
        return "amoeba", embedded_gguf()
    if spec.uniform_shape(dims) is None:
        raise UserError("GGUF of a subnet with per-layer widths is written for the embedded model's llama "
                        "architecture only (llama.cpp's converter reads uniform configs): use the extracted HF "
                        "checkpoint (amoeba_search.models.load_model loads it)")
    check_convertible(loaded.model.config, subnet_config(loaded.model.config, spec))
    return "llama.cpp convert_hf_to_gguf", None
