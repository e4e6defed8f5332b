"""Flows we cannot run here (TensorRT-LLM, MLC-LLM): their tables come from measurements a user made on the device
with the engine's own benchmark tool, imported with `amoeba profile import` (format in the README)."""

from __future__ import annotations

import importlib.util

from .base import Flow, register


class ImportedFlow(Flow):
    kind = "imported"
    module = ""
    tool = ""

    def unavailable(self):
        if importlib.util.find_spec(self.module) is None:
            return (f"{self.module} is not installed here; measure on the device with {self.tool}, then "
                    f"`amoeba profile import --flow {self.name} --device NAME FILE.csv`")
        return (f"{self.module} is installed, but amoeba_search does not build {self.name} engines yet; "
                f"measure with {self.tool}, then `amoeba profile import --flow {self.name} --device NAME FILE.csv`")

    def versions(self):
        return {}


@register("tensorrt-llm")
class TensorRTLLM(ImportedFlow):
    module = "tensorrt_llm"
    tool = "trtllm-bench"
    device = "cuda"
    description = "TensorRT-LLM engines; results imported from trtllm-bench runs"


@register("mlc-llm")
class MLCLLM(ImportedFlow):
    module = "mlc_llm"
    tool = "mlc_llm bench"
    device = "cuda"
    description = "MLC-LLM compiled models; results imported from mlc_llm bench runs"
