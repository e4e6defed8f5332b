"""Which device a measurement ran on, so tables from different machines or settings are never mixed."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from ..artifacts import cpu_name, environment


def gpu_name() -> str | None:
    """GPU model: NVML first (desktop/server), then torch's device properties, then the Jetson device tree."""
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).name
    with contextlib.suppress(OSError):  # Jetson boards have CUDA but no NVML
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or None
    return None


def device_name(on: str = "cpu") -> str:
    """Human-readable name of the device a flow runs on ('cpu' or 'cuda')."""
    return (gpu_name() or "unknown CUDA device") if on == "cuda" else cpu_name()


def slug(text: str) -> str:
    """A directory-safe device name: 'Intel(R) Xeon(R) ...' -> 'intel-xeon-...'."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:60] or "device"


def default_device_slug(on: str = "cpu") -> str:
    """Profile directory name for this machine when the user gives no --device."""
    return slug(device_name(on))


def measurement_environment(flow_versions: dict[str, str], on: str) -> dict[str, Any]:
    """Everything that changes a latency: device, libraries, threads; recorded with every table."""
    from .load import reference_speeds

    env = environment()
    env["device_name"] = device_name(on)
    env["flow_versions"] = flow_versions
    if on == "cpu":              # the speeds later runs compare against (profiling.load)
        env.update(reference_speeds())
    return env


# The fields that must agree before two measurements may share one table (dates and amoeba version may differ).
ENVIRONMENT_KEY = ("device_name", "cpu_count", "torch_threads", "torch", "transformers", "flow_versions")


def environment_key(env: dict[str, Any]) -> dict[str, Any]:
    return {key: env.get(key) for key in ENVIRONMENT_KEY}
