"""`python -m amoeba_search.cli` (e.g. under `accelerate launch -m amoeba_search.cli finetune ...`)."""

from . import main

main()
