"""Optional torch backend (extra `[gpu]`): CLIP scoring, dynamic batching, a standalone worker.

Nothing here imports torch at import time: the service imports these modules only when local
judging is configured, and the base install never needs torch.
"""

from __future__ import annotations

import importlib.util


def torch_installed() -> bool:
    """Whether the [gpu] extra is there, without importing it."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())
