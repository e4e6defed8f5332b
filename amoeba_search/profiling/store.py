"""Where device profiles live, and the one place that reads and writes them.

A store has one writable root: `--profiles-dir`, else $AMOEBA_PROFILES_DIR, else the checkout's `device_profiles/`
(so `amoeba profile` adds to it as the README says; a per-user data dir for an installed package). Reads look in
the root first and then in the profiles shipped with the package, so `amoeba predict --device amd-epyc --flow torch-eager` finds the shipped
profile from any working directory. Whole profiles (imported, estimated) are written to a temporary directory and
renamed into place: a failed write leaves the previous profile as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..artifacts import atomic_directory, write_csv_atomic, write_json_atomic
from ..resources import default_profiles_root, shipped
from .lut import LookupTable

PROFILES_ENV = "AMOEBA_PROFILES_DIR"


class ProfileStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        explicit = root or os.environ.get(PROFILES_ENV)
        self.shipped = shipped("device_profiles")
        self.root = Path(explicit) if explicit else default_profiles_root()
        self.roots = [self.root] + ([self.shipped] if self.shipped != self.root.resolve() else [])

    def directory(self, device: str, flow: str) -> Path:
        """Where a profile of this device/flow is (or would be) written."""
        return self.root / device / flow

    def find(self, device: str, flow: str) -> Path:
        """The first existing profile of this device/flow in the root, then the shipped profiles."""
        for root in self.roots:
            if (root / device / flow / "meta.json").is_file():
                return root / device / flow
        return self.directory(device, flow)

    def load(self, device: str, flow: str) -> LookupTable:
        return LookupTable.load(self.find(device, flow))

    def spec_dirs(self) -> list[Path]:
        """Roofline device specs: the root's `specs/` first, then the shipped ones."""
        return [root / "specs" for root in self.roots]

    def devices(self) -> list[str]:
        return sorted({p.parent.parent.name for root in self.roots for p in root.glob("*/*/meta.json")})

    @staticmethod
    def write_meta(directory: Path, meta: dict) -> None:
        write_json_atomic(directory / "meta.json", meta)

    @staticmethod
    def write_table(directory: Path, table: pd.DataFrame) -> None:
        write_csv_atomic(directory / "lut.csv", table)

    def write_profile(self, directory: Path, meta: dict, table: pd.DataFrame,
                      measurements: pd.DataFrame | None = None) -> LookupTable:
        """A whole profile (meta.json + lut.csv [+ measurements.csv]) into place at once: written to a temporary
        directory beside it, checked by loading it, then renamed over what was there."""
        with atomic_directory(directory, overwrite=True) as tmp:
            self.write_meta(tmp, meta)
            self.write_table(tmp, table)
            if measurements is not None:
                write_csv_atomic(tmp / "measurements.csv", measurements)
            LookupTable.load(tmp)
        return LookupTable.load(directory)
