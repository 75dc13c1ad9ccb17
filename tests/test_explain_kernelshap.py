"""KernelSHAP and occlusion in numpy (`service/explain/kernelshap.py`) against Shapley values computed by
enumerating every coalition, and the CTC log-likelihood against a brute-force sum over alignments."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from service.explain.audio import ctc_log_likelihood
from service.explain.kernelshap import (
    kernel_attributions,
    kernel_coalitions,
    occlusion_attributions,
    occlusion_coalitions,
)

Value = Callable[[np.ndarray], np.ndarray]


def exact_shapley(value: Value, m: int) -> np.ndarray:
    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for subset in itertools.combinations(others, size):
                without = np.zeros((1, m), dtype=bool)
                without[0, list(subset)] = True
                with_i = without.copy()
                with_i[0, i] = True
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[i] += weight * float(value(with_i)[0] - value(without)[0])
    return phi


def nonlinear(masks: np.ndarray) -> np.ndarray:
    x = masks.astype(np.float64)
    return (
        np.tanh(x @ np.arange(1.0, x.shape[1] + 1) / 3) * x[:, 0]
        + x[:, 1] * x[:, 2]
        - 0.5 * x[:, 3] * x[:, 0]
    )


@pytest.mark.parametrize("m", [4, 5, 6])
def test_with_a_budget_that_covers_every_coalition_kernel_shap_is_exact(m: int) -> None:
    coalitions = kernel_coalitions(m, 2**m + 2, seed=0)
    phi = kernel_attributions(coalitions, nonlinear(coalitions.masks))
    np.testing.assert_allclose(phi, exact_shapley(nonlinear, m), atol=1e-9)


def test_sampled_kernel_shap_is_exact_for_additive_values_and_always_efficient() -> None:
    m = 49
    weights = np.random.default_rng(2).normal(size=m)

    def additive(masks: np.ndarray) -> np.ndarray:
        return masks.astype(np.float64) @ weights + 0.3

    coalitions = kernel_coalitions(m, 200, seed=7)
    assert coalitions.masks.shape[0] <= 200
    np.testing.assert_allclose(
        kernel_attributions(coalitions, additive(coalitions.masks)), weights, atol=1e-9
    )
    scores = nonlinear(coalitions.masks)
    phi = kernel_attributions(coalitions, scores)
    assert abs(phi.sum() - (scores[0] - scores[1])) < 1e-9


def test_the_same_seed_plans_the_same_coalitions() -> None:
    first, again, other = (kernel_coalitions(30, 100, seed=s) for s in (1, 1, 2))
    assert np.array_equal(first.masks, again.masks) and np.array_equal(first.weights, again.weights)
    assert not np.array_equal(first.masks, other.masks)


def test_occlusion_removes_one_feature_per_row() -> None:
    coalitions = occlusion_coalitions(4)
    assert coalitions.masks.tolist()[:2] == [[True] * 4, [False] * 4]
    assert (~coalitions.masks[2:]).sum(axis=1).tolist() == [1, 1, 1, 1]
    scores = nonlinear(coalitions.masks)
    np.testing.assert_allclose(occlusion_attributions(scores), scores[0] - scores[2:])


def test_ctc_log_likelihood_sums_every_alignment() -> None:
    rng = np.random.default_rng(0)
    frames, vocabulary, blank = 5, 3, 0
    logits = rng.normal(size=(2, frames, vocabulary))
    log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    for labels in ([1, 2], [1, 1], [], [2]):
        brute = []
        for item in range(2):
            total = -np.inf
            for path in itertools.product(range(vocabulary), repeat=frames):
                collapsed = [s for i, s in enumerate(path) if s != blank and (i == 0 or s != path[i - 1])]
                if collapsed == labels:
                    total = np.logaddexp(total, sum(log_probs[item, t, s] for t, s in enumerate(path)))
            brute.append(total)
        np.testing.assert_allclose(ctc_log_likelihood(log_probs, labels, blank=blank), brute, atol=1e-9)
