"""ONNX Runtime (CPU execution provider) on a graph exported by torch.onnx (dynamo exporter) from KVStep."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .base import Flow, Prepared, register
from ..lut import Setting
from ..step import KVStep, step_inputs

# Exports kept for the life of the process, up to this share of the free disk space.
EXPORT_CACHE_DISK_SHARE = 0.5


def export_key(model, setting: Setting) -> str:
    """What an export depends on: every parameter's name, shape, dtype and a sample of its values, the step's
    input shape, and the torch version. Interleaved profiles and validation re-extract the same models once per
    pass; with this key they are exported once (an export costs ~20 s, timing it ~3 s)."""
    digest = hashlib.sha256(f"{setting.phase}/{setting.tokens}/{setting.batch}/{torch.__version__}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().flatten()[:64].float().numpy().tobytes())
    return digest.hexdigest()[:24]


class ExportCache:
    """ONNX files on disk by export_key, in a directory removed when the process exits. Passes visit the same
    models in the same order, a scan for which dropping the oldest file would miss every time once the files
    outgrow the limit; so files are kept first come, and beyond the limit a new export is used once and deleted.
    A profile with its validation writes ~26 GB of fp32 exports."""

    def __init__(self, limit_mib: float | None = None) -> None:
        self.limit_mib = limit_mib
        self.directory: Path | None = None
        self.paths: dict[str, Path] = {}

    @contextlib.contextmanager
    def file(self, key: str, export):
        """The ONNX file for `key` while the context is open, written by `export(path)` unless kept from before."""
        if key in self.paths:
            yield self.paths[key]
            return
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="amoeba_onnx_"))
            atexit.register(shutil.rmtree, self.directory, True)
            if self.limit_mib is None:
                self.limit_mib = EXPORT_CACHE_DISK_SHARE * shutil.disk_usage(self.directory).free / 2**20
        folder = self.directory / key
        folder.mkdir()
        try:
            export(folder / "step.onnx")
            yield folder / "step.onnx"
        except BaseException:                         # a failed export or session: nothing of it is kept
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if self.size_mib() + folder_mib(folder) <= self.limit_mib:
            self.paths[key] = folder / "step.onnx"
        else:
            shutil.rmtree(folder)

    def size_mib(self) -> float:
        return sum(folder_mib(p.parent) for p in self.paths.values())


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20 if folder.is_dir() else 0.0


EXPORTS = ExportCache()


@register("onnxruntime")
class OnnxRuntime(Flow):
    packages = ("torch", "onnxruntime", "onnx", "onnxscript")
    description = "torch.onnx.export(dynamo=True) of the prefill/decode step, ONNX Runtime CPU execution provider"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        import onnxruntime as ort

        inputs = step_inputs(model, setting.phase, setting.tokens, setting.batch)

        def export(path: Path) -> None:
            # The exporter narrates each pass on stdout and warns about deprecated pytree APIs: keep the bar clean.
            with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger("torch.onnx").setLevel(logging.ERROR)
                torch.onnx.export(KVStep(model).eval(), inputs, str(path), dynamo=True, verbose=False)

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        with EXPORTS.file(export_key(model, setting), export) as path:   # weights are in memory once loaded
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {name: tensor.numpy() for name, tensor in zip(names, inputs)}
        return Prepared(lambda: session.run(None, feed))
