"""amoeba_search: hardware-aware selection, extraction, profiling and search of elastic-LLM subnets."""

__version__ = "0.1.0"
