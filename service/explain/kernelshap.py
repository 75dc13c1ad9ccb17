"""KernelSHAP and occlusion over F binary features, in numpy: which coalitions to evaluate, and how
their scores become one attribution per feature.

A coalition is a row of keep-flags (1 = the feature keeps its value, 0 = it takes the baseline's).
KernelSHAP follows shap's KernelExplainer (Lundberg & Lee 2017): subset sizes are enumerated in full
while the budget covers them, the rest are sampled by the Shapley kernel's weight with each sample's
complement, and the attributions solve a weighted least-squares fit under the efficiency constraint
sum(phi) = f(x) - f(baseline), so the efficiency property holds by construction. Everything is
deterministic for a given `seed`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
Scores = npt.NDArray[np.float64]


@dataclass(slots=True)
class Coalitions:
    """Rows to evaluate: row 0 keeps every feature (x), row 1 none (the baseline), then `masks[2:]`."""

    masks: BoolArray
    """(N, F) keep-flags."""
    weights: Scores
    """(N,) regression weights of each row (0 for the two reference rows)."""


def occlusion_coalitions(features: int) -> Coalitions:
    """x, the baseline, then x with one feature at a time set to the baseline: F + 2 rows."""
    masks = np.ones((features + 2, features), dtype=bool)
    masks[1] = False
    masks[np.arange(2, features + 2), np.arange(features)] = False
    return Coalitions(masks=masks, weights=np.zeros(features + 2))


def occlusion_attributions(scores: Scores) -> Scores:
    """f(x) - f(x without feature i), from the scores of `occlusion_coalitions` rows."""
    return scores[0] - scores[2:]  # type: ignore[no-any-return]


def kernel_coalitions(features: int, budget: int, seed: int) -> Coalitions:
    """x, the baseline and up to `budget - 2` coalitions with their Shapley kernel weights."""
    m = features
    rows: dict[bytes, tuple[BoolArray, float]] = {}
    if m >= 2:
        _enumerate_and_sample(m, budget - 2, np.random.default_rng(seed), rows)
    masks = np.ones((2 + len(rows), m), dtype=bool)
    masks[1] = False
    weights = np.zeros(2 + len(rows))
    for i, (mask, weight) in enumerate(rows.values(), start=2):
        masks[i] = mask
        weights[i] = weight
    return Coalitions(masks=masks, weights=weights)


def _enumerate_and_sample(
    m: int, samples: int, rng: np.random.Generator, rows: dict[bytes, tuple[BoolArray, float]]
) -> None:
    """shap's scheme: size pairs (s, m - s) in full while affordable, the rest sampled in pairs."""
    sizes = math.ceil((m - 1) / 2)
    paired = (m - 1) // 2
    weight = np.array([(m - 1) / (s * (m - s)) for s in range(1, sizes + 1)])
    weight[:paired] *= 2  # size s also stands for size m - s
    weight /= weight.sum()
    left, remaining = samples, weight.copy()
    full = 0
    for s in range(1, sizes + 1):
        count = math.comb(m, s) * (2 if s <= paired else 1)
        if remaining[s - 1] == 0 or left * remaining[s - 1] / remaining[s - 1:].sum() < count - 1e-8:
            break
        share = weight[s - 1] / count
        for chosen in itertools.combinations(range(m), s):
            mask = np.zeros(m, dtype=bool)
            mask[list(chosen)] = True
            _add(rows, mask, share)
            if s <= paired:
                _add(rows, ~mask, share)
        left -= count
        full = s
    left_weight = weight[full:].sum()
    if full >= sizes or left < 2 or left_weight <= 0:
        return
    probs = weight[full:] / left_weight
    sampled: dict[bytes, tuple[BoolArray, float]] = {}
    for _ in range(left // 2 * 4):  # bounded: duplicates only add weight
        if len(sampled) >= left - 1:
            break
        size = full + 1 + int(rng.choice(len(probs), p=probs))
        mask = np.zeros(m, dtype=bool)
        mask[rng.permutation(m)[:size]] = True
        _add(sampled, mask, 1.0)
        _add(sampled, ~mask, 1.0)
    total = sum(w for _, w in sampled.values())
    for key, (mask, w) in sampled.items():
        rows[key] = (mask, left_weight * w / total)


def _add(rows: dict[bytes, tuple[BoolArray, float]], mask: BoolArray, weight: float) -> None:
    key = np.packbits(mask).tobytes()
    old = rows.get(key)
    rows[key] = (mask, weight + (old[1] if old else 0.0))


def kernel_attributions(coalitions: Coalitions, scores: Scores) -> Scores:
    """Weighted least squares with sum(phi) = f(x) - f(baseline); one value per feature."""
    masks = coalitions.masks[2:].astype(np.float64)  # (N, F)
    weights = coalitions.weights[2:]
    full, base = float(scores[0]), float(scores[1])
    delta = full - base
    m = masks.shape[1]
    if m == 1:
        return np.array([delta])
    # eliminate the last feature with the constraint: phi_last = delta - sum(phi_rest)
    target = scores[2:] - base - masks[:, -1] * delta  # (N,)
    design = masks[:, :-1] - masks[:, -1:]  # (N, F - 1)
    root = np.sqrt(weights)[:, None]
    head, *_ = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)
    return np.concatenate([head, [delta - head.sum()]])
