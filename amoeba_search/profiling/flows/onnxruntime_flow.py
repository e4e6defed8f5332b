"""ONNX Runtime (CPU execution provider) on a graph exported by torch.onnx (dynamo exporter) from KVStep."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import torch

from .base import Flow, Prepared, register
from ..step import KVStep, step_inputs


@register("onnxruntime")
class OnnxRuntime(Flow):
    packages = ("torch", "onnxruntime", "onnx", "onnxscript")
    description = "torch.onnx.export(dynamo=True) of the prefill/decode step, ONNX Runtime CPU execution provider"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        import onnxruntime as ort

        inputs = step_inputs(model, setting.phase, setting.tokens, setting.batch)
        with tempfile.TemporaryDirectory(prefix="amoeba_onnx_") as tmp:
            path = Path(tmp) / "step.onnx"
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
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {name: tensor.numpy() for name, tensor in zip(names, inputs)}
        return Prepared(lambda: session.run(None, feed))
