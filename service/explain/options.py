"""The explain options checked against the task: method, budget, target, seed, baseline.

Every refusal is an InvalidInput (400) that says what is accepted. `plan` turns the method and budget
into the coalitions to evaluate, `attribute` turns their scores into attributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.explain import kernelshap
from service.explain.kernelshap import Coalitions, Scores
from service.explain.schema import MAX_BUDGET, METHODS, MIN_BUDGET, Efficiency, ExplainOptions
from service.tasks.labels import label_names

EFFICIENCY_TOLERANCE = 1e-6
"""|sum(attributions) - (f(x) - f(baseline))| is at most this (the constraint is solved exactly)."""
MAX_SEED = 2**32 - 1
FIELDS = ("method", "target", "budget", "seed", "baseline")
"""Option names, as JSON fields, form fields or query parameters."""


def parse(raw: dict[str, Any]) -> ExplainOptions:
    """Options from query parameters, JSON or form fields (form values arrive as strings)."""
    method = raw.get("method")
    if method is not None and method not in METHODS:
        raise InvalidInput(f"unknown method '{str(method)[:40]}'; methods are {', '.join(METHODS)}")
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, str | int)):
        raise InvalidInput("'target' must be a label name or a label index")
    budget = _integer(raw.get("budget"), "budget", MIN_BUDGET, MAX_BUDGET)
    seed = _integer(raw.get("seed"), "seed", 0, MAX_SEED)
    baseline = raw.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise InvalidInput("'baseline' must be a string")
    return ExplainOptions(
        method=method, target=None if target is None else str(target), budget=budget,
        seed=seed or 0, baseline=baseline,
    )


def _integer(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{name}' must be an integer from {low} to {high}, got {str(value)[:20]!r}")
    if not low <= value <= high:
        raise InvalidInput(f"'{name}' must be from {low} to {high}, got {value}")
    return value


def method(options: ExplainOptions, *, task: str, allowed: Sequence[str], default: str) -> str:
    chosen = options.method or default
    if chosen not in allowed:
        raise InvalidInput(f"method '{chosen}' is not available for {task}; use one of: {', '.join(allowed)}")
    return chosen


def baseline(options: ExplainOptions, *, task: str, allowed: Sequence[str]) -> str:
    chosen = options.baseline or allowed[0]
    if chosen not in allowed:
        raise InvalidInput(
            f"baseline '{chosen[:40]}' is not available for {task}; use one of: {', '.join(allowed)}"
        )
    return chosen


@dataclass(slots=True)
class Plan:
    method: str
    coalitions: Coalitions


def plan(chosen: str, options: ExplainOptions, *, features: int, noun: str, default_budget: int) -> Plan:
    """The coalitions of `chosen` over `features` features, within the budget."""
    needed = features + 2
    if chosen == "occlusion":
        if options.budget is not None and options.budget < needed:
            raise InvalidInput(
                f"occlusion over {features} {noun} needs {needed} evaluations but budget is "
                f"{options.budget}; raise budget or leave it out"
            )
        return Plan(chosen, kernelshap.occlusion_coalitions(features))
    budget = options.budget or min(MAX_BUDGET, max(default_budget, 2 * features + 2))
    if budget < needed:
        raise InvalidInput(
            f"kernel-shap over {features} {noun} needs a budget of at least {needed} evaluations "
            f"(got {budget}); raise budget (up to {MAX_BUDGET}) or use method=occlusion"
        )
    return Plan(chosen, kernelshap.kernel_coalitions(features, budget, options.seed))


def attribute(chosen: Plan, scores: Scores) -> tuple[Scores, Efficiency | None]:
    if chosen.method == "occlusion":
        return kernelshap.occlusion_attributions(scores), None
    phi = kernelshap.kernel_attributions(chosen.coalitions, scores)
    efficiency = Efficiency(
        total=float(phi.sum()), expected=float(scores[0] - scores[1]), tolerance=EFFICIENCY_TOLERANCE
    )
    return phi, efficiency


def target_index(options: ExplainOptions, labels: Sequence[str], scores: Scores) -> int:
    """The label to explain: by name, by index, or the top prediction."""
    names = label_names(labels, scores.size)
    if options.target is None:
        return int(np.argmax(scores))
    if options.target in names:
        return names.index(options.target)
    if options.target.isdigit() and int(options.target) < len(names):
        return int(options.target)
    shown = ", ".join(names[:50]) + (" ..." if len(names) > 50 else "")
    raise InvalidInput(
        f"unknown target '{options.target[:40]}'; give a label name or an index from 0 to {len(names) - 1} "
        f"(labels: {shown})"
    )
