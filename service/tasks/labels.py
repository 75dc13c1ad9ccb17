"""Class scores -> ranked labels, shared by image, text and audio classification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.errors import InferenceFailed


@dataclass(slots=True)
class RankedLabels:
    """The best `top_k` labels of one item, best first, and optionally every label's score."""

    top: list[tuple[str, float]]
    all_scores: dict[str, float] | None


def softmax(logits: npt.NDArray[np.floating], axis: int = -1) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - np.max(logits, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)  # type: ignore[no-any-return]


def log_softmax(logits: npt.NDArray[np.floating], axis: int = -1) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - np.max(logits, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))  # type: ignore[no-any-return]


def sigmoid(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    x = np.clip(logits.astype(np.float64), -500.0, 500.0)
    return 1.0 / (1.0 + np.exp(-x))  # type: ignore[no-any-return, unused-ignore]


def label_names(labels: Sequence[str], count: int) -> list[str]:
    """Names for `count` classes: the configured ones, then the index for any class without a name."""
    return [labels[i] if i < len(labels) else str(i) for i in range(count)]


def rank(
    scores: npt.NDArray[np.floating], labels: Sequence[str], *, top_k: int, return_all: bool
) -> RankedLabels:
    """Rank one item's class scores (shape [classes]); ties keep the lower index first."""
    if scores.ndim != 1 or scores.size == 0:
        raise InferenceFailed(f"model output has shape {list(scores.shape)} per item; expected [classes]")
    names = label_names(labels, scores.size)
    order = np.argsort(-scores, kind="stable")[: max(1, top_k)]
    top = [(names[i], float(scores[i])) for i in order]
    all_scores = {names[i]: float(scores[i]) for i in range(scores.size)} if return_all else None
    return RankedLabels(top=top, all_scores=all_scores)


def class_scores(output: npt.NDArray[np.floating], *, items: int, activation: str) -> npt.NDArray[np.float64]:
    """Model output [items, classes] -> probabilities, by `activation` (softmax, sigmoid or none)."""
    if output.ndim != 2 or output.shape[0] != items:
        raise InferenceFailed(
            f"model output has shape {list(output.shape)}; expected [{items}, classes] for the task"
        )
    if activation == "softmax":
        return softmax(output)
    if activation == "sigmoid":
        return sigmoid(output)
    return output.astype(np.float64)
