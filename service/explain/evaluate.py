"""Run many perturbed copies of one input through a model's dynamic batcher at low priority.

The copies go in chunks of at most LOW_PRIORITY_CHUNK items (a batch cannot be interrupted: small
chunks keep the wait of an ordinary request that arrives behind one short), a few chunks queued at a
time (enough to keep every instance busy, few enough to bound memory for long recordings). Each chunk
is an ordinary batcher job of `Priority.LOW`: ordinary requests overtake it in the queue. One deadline
covers the whole explanation; a failure or a cancellation (client gone) cancels every chunk still queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.batching.batcher import Priority
from service.errors import RequestTimeout
from service.explain import options
from service.explain.kernelshap import BoolArray, Scores
from service.explain.options import Plan
from service.explain.schema import Efficiency, ExplainOptions
from service.repository.registry import LoadedModel
from service.tasks import labels
from service.tasks.pipeline import output
from service.types import Tensor, TensorMap

LOW_PRIORITY_CHUNK = 16
"""Most copies per batcher job. A model with batching off gets one copy per call: its batch axis may
be fixed at 1, as /predict sends it."""

Build = Callable[[BoolArray], TensorMap]
"""(n, F) keep-flags -> the model inputs of those n copies."""


def chunk_size(model: LoadedModel) -> int:
    return min(model.config.max_batch_size, LOW_PRIORITY_CHUNK) if model.config.max_batch_size else 1


async def evaluate(
    model: LoadedModel, masks: BoolArray, build: Build, *, timeout_s: float
) -> list[TensorMap]:
    """Outputs for every row of `masks`, in order, one TensorMap per chunk of `chunk_size(model)` rows.

    Raises RequestTimeout after `timeout_s` (chunks not yet computed are dropped) and whatever
    LoadedModel.infer raises (QueueFull, InvalidInput, ...).
    """
    size = chunk_size(model)
    starts = range(0, masks.shape[0], size)
    results: list[TensorMap | None] = [None] * len(starts)
    deadline = time.monotonic() + timeout_s
    in_flight = asyncio.Semaphore(model.config.instances + 1)

    async def run(index: int, start: int) -> None:
        async with in_flight:
            inputs = build(masks[start : start + size])
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout(model, timeout_s)
            results[index] = await model.infer(inputs, timeout_s=left, priority=Priority.LOW)

    try:
        async with asyncio.timeout(timeout_s):
            try:
                async with asyncio.TaskGroup() as group:
                    for index, start in enumerate(starts):
                        group.create_task(run(index, start))
            except ExceptionGroup as failed:  # the first failure; the other chunks were cancelled with it
                raise failed.exceptions[0] from None
    except TimeoutError:
        raise _timeout(model, timeout_s) from None
    return [r for r in results if r is not None]


def concat(chunks: list[TensorMap], name: str) -> Tensor:
    """One output of every copy, chunks joined on the batch axis."""
    return np.concatenate([chunk[name] for chunk in chunks], axis=0)


def _timeout(model: LoadedModel, timeout_s: float) -> RequestTimeout:
    return RequestTimeout(
        f"the explanation on model '{model.name}' did not finish within {timeout_s:g} s; "
        "lower `budget`, retry when the server is less busy, or raise the model's request_timeout_s"
    )


@dataclass(slots=True)
class ClassAttribution:
    """A classifier explained: class scores of every copy (row 0 the unperturbed input), the explained
    class and each feature's attribution to its score."""

    probs: Scores
    target: int
    phi: Scores
    efficiency: Efficiency | None


async def attribute_class(
    model: LoadedModel,
    plan: Plan,
    build: Build,
    opts: ExplainOptions,
    *,
    output_name: str,
    names: Sequence[str],
    activation: Literal["softmax", "sigmoid", "none"],
    timeout_s: float,
) -> ClassAttribution:
    """Evaluate `plan`'s copies through the batcher, score them per class, and attribute the target class."""
    chunks = await evaluate(model, plan.coalitions.masks, build, timeout_s=timeout_s)
    probs = labels.class_scores(
        output({output_name: concat(chunks, output_name)}, output_name, model),
        items=plan.coalitions.masks.shape[0], activation=activation,
    )
    target = options.target_index(opts, names, probs[0])
    phi, efficiency = options.attribute(plan, probs[:, target])
    return ClassAttribution(probs=probs, target=target, phi=phi, efficiency=efficiency)
