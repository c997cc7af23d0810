"""Optional torch backend (extra `[gpu]`): CLIP scoring, dynamic batching, a standalone worker.

Nothing here imports torch at import time: the service imports these modules only when local
judging is configured, and the base install never needs torch.
"""

from __future__ import annotations

import importlib.util
import os


def torch_installed() -> bool:
    """Whether the [gpu] extra is there, without importing it."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    # Importing torch costs seconds and hundreds of MB of RSS; without the NVIDIA driver's
    # device files there is no CUDA to find, so do not pay for it.
    if not any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidia0")):
        return False
    import torch

    return bool(torch.cuda.is_available())
