"""The contract every model family implements: options in, a published model and its metrics out.

`models/cli.py` builds a `BuildOptions` from argv and calls `Recipe.build` for each family it is asked
for; a family owns its data, net, training config, export inputs and task metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch stays an import of the recipes, not of this contract
    from torch import nn


@dataclass(slots=True)
class BuildOptions:
    """How to build one family (shared by every family of one `deepserve-train build`)."""

    out: Path
    """Model repository root."""
    quick: bool = False
    """Tiny data and few epochs: one family in about 45 s on 2 cores (tests, CI)."""
    epochs: int | None = None
    """Override the family's default number of epochs."""
    seed: int = 0
    device: str = "cpu"
    data: Path | None = None
    """The user's own data instead of the built-in data (format depends on the family)."""
    version: int = 1
    progress: bool = True
    """Show tqdm bars."""


@dataclass(slots=True)
class FamilyResult:
    """What one family build produced."""

    name: str
    metrics: dict[str, float]
    """Held-out metrics (accuracy, macro_f1, wer, baseline_accuracy, ...)."""
    parity: dict[str, float]
    """Max abs diff torch vs ONNX Runtime per parity case."""
    path: Path
    """The published version folder."""
    seconds: float
    extra: dict[str, FamilyResult] = field(default_factory=dict)
    """Further published variants (e.g. an INT8 version), by label."""
    net: nn.Module | None = None
    """The trained torch net that was exported (cpu, eval mode), for checks against the served model;
    it takes the published model's inputs in config order and returns its outputs."""


class Recipe(Protocol):
    """One model family: data, net, TrainConfig, export inputs, task metadata."""

    name: str
    """Model name in the repository: cnn, mlp, text, speech."""
    description: str

    def build(self, opts: BuildOptions) -> FamilyResult: ...
