"""Roofline estimates for devices we cannot reach: not a runtime, so it times nothing; its tables come from a device
spec file (peak bandwidth and compute, efficiencies, fixed overheads) and are labelled as estimates."""

from __future__ import annotations

from .base import Flow, register


@register("roofline")
class Roofline(Flow):
    kind = "estimate"
    device = "any spec"
    packages = ()
    description = ("roofline estimate from a device spec (device_profiles/specs/NAME.json): per block max(FLOPs / "
                   "compute, bytes / bandwidth) + fixed overheads")

    def note(self, store):
        from ..roofline import spec_names

        return f"specs: {', '.join(spec_names(store)) or 'none'}"

    def estimate(self, loaded, store, device, settings, grid):
        from ..roofline import estimate_profile, load_spec

        spec = load_spec(device, store)
        return estimate_profile(loaded, spec, store.directory(device, self.name), settings, grid, store)
