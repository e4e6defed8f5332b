"""CUDA flows: transformers eager in fp16, and the same step replayed from a captured CUDA graph."""

from __future__ import annotations

import torch

from .base import Flow, Prepared, model_copy, register
from .torch_eager import hf_step
from ..step import KVStep, step_inputs


class CudaFlow(Flow):
    device = "cuda"
    dtypes = ("float16", "bfloat16", "float32")

    def unavailable(self):
        if not torch.cuda.is_available():
            return "no CUDA device visible to torch (needs an NVIDIA GPU and a CUDA build of torch)"
        return super().unavailable()

    def versions(self):
        return {**super().versions(), "cuda": str(torch.version.cuda)}


@register("cuda-eager")
class CudaEager(CudaFlow):
    description = "transformers forward + DynamicCache on the GPU (fp16 by default)"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        return hf_step(model_copy(model, setting.dtype, "cuda"), setting, "cuda")


@register("cuda-graphs")
class CudaGraphs(CudaFlow):
    description = "KVStep captured once as a CUDA graph and replayed (no per-kernel launch cost)"

    def prepare(self, model, setting):
        self.require(setting.dtype)
        step = KVStep(model_copy(model, setting.dtype, "cuda")).eval()
        inputs = step_inputs(step.model, setting.phase, setting.tokens, setting.batch, "cuda")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):                      # warm up allocator and kernels before capture
                step(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            step(*inputs)
        return Prepared(graph.replay)
