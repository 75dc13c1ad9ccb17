"""Execution-provider preference -> the list handed to ONNX Runtime, and what really runs.

`onnxruntime-gpu` lists CUDAExecutionProvider even where the CUDA libraries are missing; a session
that asks for it then quietly falls back to CPU. So the preference is only a request: the provider
in use is read back from `session.get_providers()` (see `runtime/session.py`) and reported per model.
A provider that fell back once is not asked for again in this process (`mark_unusable`): ONNX Runtime
would retry loading its libraries, and print the same error, for every model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

_unusable: set[str] = set()
"""Providers this build offers that failed to start here (missing CUDA/cuDNN libraries, no GPU)."""


def resolve_providers(preference: Sequence[str]) -> list[str]:
    """Keep the preferred providers this onnxruntime build offers, in order, CPU always last.

    Unknown or unavailable names, and those marked unusable, are dropped with a debug line; an empty
    preference gives [CPU].
    """
    available = set(ort.get_available_providers()) - _unusable
    kept: list[str] = []
    for name in dict.fromkeys(preference):  # de-duplicate, keep order
        if name == CPU:
            continue
        if name in available:
            kept.append(name)
        else:
            logger.debug("execution provider %s is not in this onnxruntime build; skipped", name)
    return [*kept, CPU]


def mark_unusable(requested: Sequence[str], in_use: Sequence[str]) -> None:
    """Remember the requested providers that a session did not get, so later sessions skip them."""
    _unusable.update(set(requested) - set(in_use) - {CPU})


def describe_fallback(requested: Sequence[str], in_use: Sequence[str]) -> str | None:
    """A sentence when the first requested provider is not the one running, else None."""
    wanted = requested[0] if requested else CPU
    actual = in_use[0] if in_use else CPU
    if wanted == actual:
        return None
    return f"{wanted} was requested but is not usable here; running on {actual}"
