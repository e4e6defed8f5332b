"""Files shipped with amoeba_search (device profiles and specs, strategies), found from the package itself, never
from the working directory. `_shipped/` holds them: in a checkout as links to the top-level folders, in a built
wheel as package data (pyproject.toml's package-data follows the links)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = PACKAGE_DIR / "_shipped"


def shipped(name: str) -> Path:
    """`device_profiles`, `strategies` or `adapters` as shipped with the package (the checkout's folder itself, not the link)."""
    return (SHIPPED / name).resolve()


def shipped_strategy(model: str = "smollm2-135m", blocks: bool = False) -> Path:
    """The DP depth + FLAP width strategy computed for the embedded model (made by `amoeba select`); with
    `blocks`, the same strategy with its replace-one-block scores (made by `amoeba blocks`)."""
    return shipped("strategies") / f"{model}.dp-flap{'-blocks' if blocks else ''}.json"


def shipped_adapters(model: str = "smollm2-135m") -> Path:
    """Adapters trained for the embedded model with the shipped strategy (made by `amoeba finetune`; the training
    command and record are beside them)."""
    return shipped("adapters") / model


def default_profiles_root() -> Path:
    """Where new profiles go by default: the checkout's device_profiles/ (they are committed there), or, for an
    installed package, a per-user data directory (never the installed package, never the working directory)."""
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return shipped("device_profiles")
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "amoeba_search" / "device_profiles"
