"""Model families: one small file per family says where a decoder block keeps its projections (split or fused),
which of its parts follow the kept heads / KV groups / MLP channels, which biases it can hold, and what it cannot
prune exactly. View, extraction, width scoring, SMoL and GGUF export read the family instead of branching on
architectures; a model outside every family is refused with one line. A new family is one new file calling
`register_family("model_type", Family(...))`."""

from ..registry import Registry

FAMILIES = Registry("model family", base="amoeba_search.families.base:Family", package=__name__)

__all__ = ["FAMILIES"]
