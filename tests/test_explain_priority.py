"""Priority lanes of the DynamicBatcher: low-priority work (explanations) never delays ordinary requests by
more than the batch being computed, cannot make them fail with QueueFull, and is dropped when its caller
goes away. Real ONNX Runtime sessions; a gate (threading.Event) holds the first batch in flight so the
queue fills deterministically, and the runner records every batch it computes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from onnx_models import batch_size_model, write_model

from service.batching.batcher import DynamicBatcher, Priority
from service.errors import QueueFull
from service.repository.config import ModelConfig
from service.runtime.session import OnnxSession
from service.types import TensorMap

LOW, NORMAL = Priority.LOW, Priority.NORMAL
Gated = Callable[..., tuple[DynamicBatcher, "Recorder"]]


class Recorder:
    """Runs batches on a real session, records each batch's markers, holds calls until `gate` is set."""

    def __init__(self, session: OnnxSession, loop: asyncio.AbstractEventLoop) -> None:
        self.session, self.loop = session, loop
        self.gate = threading.Event()
        self.entered = asyncio.Event()
        self.batches: list[list[float]] = []

    def __call__(self, inputs: TensorMap) -> TensorMap:
        self.batches.append(sorted({float(v) for v in inputs["x"][:, 0]}))
        self.loop.call_soon_threadsafe(self.entered.set)
        self.gate.wait(30)
        return self.session.run(inputs)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Callable[..., tuple[DynamicBatcher, Recorder]]]:
    path = write_model(tmp_path, "batch", batch_size_model()) / "model.onnx"
    session = OnnxSession.load(
        path, config=ModelConfig(intra_op_threads=1), providers=["CPUExecutionProvider"]
    )
    made: list[tuple[DynamicBatcher, Recorder]] = []

    def factory(**overrides: object) -> tuple[DynamicBatcher, Recorder]:
        recorder = Recorder(session, asyncio.get_running_loop())
        options: dict[str, object] = {
            "model": "m", "version": "1", "max_batch_size": 4, "max_queue_delay_ms": 1.0,
            "preferred_batch_sizes": (), "max_queue_size": 8, "pad_values": {},
            "provider": "CPUExecutionProvider",
        }
        batcher = DynamicBatcher(runners=[recorder], **(options | overrides))  # type: ignore[arg-type]
        made.append((batcher, recorder))
        return batcher, recorder

    yield factory
    for batcher, recorder in made:
        recorder.gate.set()
        await batcher.stop(grace_s=10)


def x_of(items: int, marker: float) -> TensorMap:
    return {"x": np.full((items, 4), marker, np.float32)}


def submit(batcher: DynamicBatcher, items: int, marker: float, priority: Priority) -> asyncio.Task[TensorMap]:
    return asyncio.create_task(
        batcher.submit(x_of(items, marker), items=items, timeout_s=30, priority=priority)
    )


async def test_ordinary_requests_overtake_queued_explanation_work(gated: Gated) -> None:
    batcher, recorder = gated()
    await batcher.start()
    blocker = submit(batcher, 1, -1.0, NORMAL)
    await asyncio.wait_for(recorder.entered.wait(), 10)  # the one instance is busy from here on
    low = [submit(batcher, 4, 100.0 + i, LOW) for i in range(5)]  # a burst of full low-priority batches
    await asyncio.sleep(0)
    normal = [submit(batcher, 1, float(i), NORMAL) for i in range(3)]  # ordinary requests arrive after it
    await asyncio.sleep(0)
    assert batcher.lane_depth(LOW) == 5 and batcher.lane_depth(NORMAL) == 3
    recorder.gate.set()
    await asyncio.gather(blocker, *low, *normal)
    # the blocker, then every ordinary request (one shared batch), then the low-priority work in its order
    assert recorder.batches == [[-1.0], [0.0, 1.0, 2.0], [100.0], [101.0], [102.0], [103.0], [104.0]]


async def test_normal_requests_fill_a_batch_before_low_priority_ones(gated: Gated) -> None:
    batcher, recorder = gated()
    await batcher.start()
    blocker = submit(batcher, 1, -1.0, NORMAL)
    await asyncio.wait_for(recorder.entered.wait(), 10)
    low = [submit(batcher, 1, 100.0 + i, LOW) for i in range(3)]
    await asyncio.sleep(0)
    normal = [submit(batcher, 1, float(i), NORMAL) for i in range(2)]
    await asyncio.sleep(0)
    recorder.gate.set()
    outputs = await asyncio.gather(*normal, *low)
    await blocker
    assert recorder.batches[1] == [0.0, 1.0, 100.0, 101.0]  # 2 normal first, room left for 2 low items
    assert recorder.batches[2] == [102.0]
    assert [int(out["batch"][0]) for out in outputs] == [4, 4, 4, 4, 1]


async def test_a_full_low_priority_lane_leaves_ordinary_admission_alone(gated: Gated) -> None:
    batcher, recorder = gated(max_queue_size=2)
    await batcher.start()
    blocker = submit(batcher, 1, -1.0, NORMAL)
    await asyncio.wait_for(recorder.entered.wait(), 10)
    low = [submit(batcher, 1, 100.0 + i, LOW) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="2 low-priority requests queued"):
        await batcher.submit(x_of(1, 200.0), items=1, timeout_s=30, priority=LOW)
    normal = [submit(batcher, 1, float(i), NORMAL) for i in range(2)]  # still admitted
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(blocker, *low, *normal)
    assert recorder.batches == [[-1.0], [0.0, 1.0, 100.0, 101.0]]


async def test_cancelled_low_priority_work_is_never_computed(gated: Gated) -> None:
    batcher, recorder = gated()
    await batcher.start()
    blocker = submit(batcher, 1, -1.0, NORMAL)
    await asyncio.wait_for(recorder.entered.wait(), 10)
    low = [submit(batcher, 4, 100.0 + i, LOW) for i in range(3)]
    await asyncio.sleep(0)
    for task in low:  # the explanation's client went away: its handler cancels what it awaits
        task.cancel()
    await asyncio.gather(*low, return_exceptions=True)
    after = submit(batcher, 1, 7.0, NORMAL)
    recorder.gate.set()
    await asyncio.gather(blocker, after)
    assert recorder.batches == [[-1.0], [7.0]]
    assert batcher.depth == 0
