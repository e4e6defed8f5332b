"""Knowledge-preserving subnet selection: which layers (depth) and channels (width) to keep, scored on calibration data.

The selector registries live here (not in the modules that fill them) so that `amoeba select --help` can list
their names without importing torch."""

from ..registry import Registry

DEPTH_SELECTORS = Registry("depth selector", modules=("amoeba_search.selection.select",
                                                      "amoeba_search.selection.depth_baselines"))
WIDTH_SCORERS = Registry("width selector", modules=("amoeba_search.selection.width",))
