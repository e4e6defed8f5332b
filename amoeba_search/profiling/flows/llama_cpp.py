"""llama.cpp through llama-cpp-python, on a GGUF written from the (extracted) model with the embedded model's
tokenizer metadata. Prefill evaluates P tokens from an empty cache; decode evaluates one token after C cached ones
(the cache is rewound to C between calls, untimed)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ...errors import UserError
from .base import Flow, Prepared, register

# dtype names a profile records -> GGUF weight types written by gguf_export
GGUF_TYPES = {"float32": "f32", "float16": "f16", "q8_0": "q8_0", "q4_1": "q4_1"}
BUILD_HINT = ("pip install llama-cpp-python (a source build, ~6 min on 2 cores; `make llama-cpp` builds it once into "
              "~/.cache/amoeba_search/wheels with CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON "
              "-DGGML_F16C=ON\", which avoids the native build's crash on some CPUs)")
# Flash attention is pinned, not left to the library: llama-cpp-python's Llama() defaults to off, while llama.cpp's own
# tools (llama-cli, llama-server, llama-bench) default to `-fa auto`, which is on for a CPU. Decode of the same GGUF
# ran ~7% faster with it on here (a noisy interleaved llama-bench check, 2026-12-06), so a table timed one way does
# not predict the other: the kit's llama-bench script passes the same setting, and the import refuses other rows.
FLASH_ATTENTION = False


@register("llama.cpp")
class LlamaCpp(Flow):
    packages = ("llama-cpp-python", "gguf")
    dtypes = tuple(GGUF_TYPES)
    description = "llama.cpp (llama-cpp-python) on a GGUF written from the subnet; dtype q4_1 = the embedded model's"
    min_layers = 1

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        return f"{reason.split(':')[0]}: {BUILD_HINT}" if reason and "llama-cpp-python" in reason else reason

    def kv_cache_dtype(self, dtype: str) -> str:
        """llama.cpp keeps K and V in f16 (its default cache type, llama-bench's type_k / type_v) whatever the
        weights' quantisation."""
        return "float16"

    def versions(self) -> dict[str, str]:
        import llama_cpp

        return {**super().versions(), "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode()[:200],
                "flash_attention": "on" if FLASH_ATTENTION else "off"}

    def prepare(self, model, setting):
        self.require(setting.dtype)
        phase, tokens = setting.phase, setting.tokens
        if setting.batch != 1:
            raise UserError("flow 'llama.cpp' times batch 1 only (llama-cpp-python runs one sequence): use --batch 1")
        if model.config.num_hidden_layers < self.min_layers:
            raise UserError("llama.cpp cannot load a model with no decoder blocks: time at least one")
        import llama_cpp

        from ...gguf_export import gguf_vocab_size, write_gguf
        from ...models import embedded_gguf

        tokenizer = embedded_gguf()          # the real vocabulary when it fits, else placeholder tokens (timing only)
        if gguf_vocab_size(tokenizer) != model.config.vocab_size:
            tokenizer = None
        workdir = Path(tempfile.mkdtemp(prefix="amoeba_llama_cpp_"))
        try:
            path = write_gguf(model, workdir / "model.gguf", tokenizer, GGUF_TYPES[setting.dtype])
            threads = torch.get_num_threads()
            # A context rounded up to 256 and the default micro-batch of 512: an exact small n_ctx/n_ubatch (136/128)
            # measured 3.4 s per decoded token here instead of 11 ms.
            context = 256 * -(-(tokens + 8) // 256)
            try:
                llm = llama_cpp.Llama(str(path), n_ctx=context, n_batch=max(512, tokens), n_ubatch=max(512, tokens),
                                      n_threads=threads, n_threads_batch=threads, flash_attn=FLASH_ATTENTION,
                                      verbose=False)
            except ValueError as exc:
                raise UserError(f"llama.cpp could not load the GGUF written for this model ({exc}); check that it "
                                "is a LLaMA-family decoder and that llama-cpp-python is recent") from exc
        finally:
            shutil.rmtree(workdir, ignore_errors=True)      # the weights are in memory once loaded
        ids = [int(i) for i in torch.randint(10, model.config.vocab_size, (tokens,), generator=torch.Generator()
                                                .manual_seed(0))]
        if phase == "prefill":
            def rewind() -> None:
                llm.n_tokens = 0                               # eval() drops cache entries past n_tokens

            rewind()
            return Prepared(lambda: llm.eval(ids), rewind)
        llm.eval(ids)                                          # C cached tokens, untimed

        def rewind_to_context() -> None:
            llm.n_tokens = tokens

        return Prepared(lambda: llm.eval(ids[:1]), rewind_to_context)
