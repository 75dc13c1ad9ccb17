"""DynamicBatcher on real ONNX Runtime sessions: batches form, deadlines hold, failures stay contained.

Runners are real `OnnxSession.run`s; some are wrapped in a gate (a threading.Event) that holds the
first batch in flight so later requests pile up in the queue deterministically, instead of sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_models import batch_size_model, classifier_model, classifier_weights, ragged_sum_model, write_model

from service import metrics
from service.batching.batcher import INLINE_MAX_S, DynamicBatcher, preferred_cut
from service.errors import InferenceFailed, QueueFull, RequestTimeout, ShuttingDown
from service.repository.config import ModelConfig
from service.runtime.session import OnnxSession
from service.types import TensorMap

Runner = Callable[[TensorMap], TensorMap]
MakeBatcher = Callable[..., Awaitable[DynamicBatcher]]
CPU = ["CPUExecutionProvider"]


def _session(folder: Path, name: str, model: Any) -> OnnxSession:
    path = write_model(folder, name, model) / "model.onnx"
    return OnnxSession.load(path, config=ModelConfig(intra_op_threads=1), providers=CPU)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OnnxSession]:
    folder = tmp_path_factory.mktemp("batcher_models")
    return {
        "batch": _session(folder, "batch", batch_size_model()),
        "classifier": _session(folder, "classifier", classifier_model()),
        "ragged": _session(folder, "ragged", ragged_sum_model()),
    }


class Gated:
    """A runner that records every batch and holds each call until `gate` is set."""

    def __init__(self, run: Runner, loop: asyncio.AbstractEventLoop, *, fail_on: float | None = None) -> None:
        self.run, self.loop, self.fail_on = run, loop, fail_on
        self.gate = threading.Event()
        self.entered = asyncio.Event()
        self.batches: list[TensorMap] = []

    def __call__(self, inputs: TensorMap) -> TensorMap:
        self.batches.append(inputs)
        self.loop.call_soon_threadsafe(self.entered.set)
        self.gate.wait(30)
        if self.fail_on is not None and np.any(inputs["x"] == self.fail_on):
            raise RuntimeError("the model refused this batch")
        return self.run(inputs)

    def seen(self, marker: float) -> bool:
        return any(np.any(batch["x"] == marker) for batch in self.batches)


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    made: list[DynamicBatcher] = []
    gates: list[Gated] = []

    async def factory(runners: Sequence[Runner], **overrides: Any) -> DynamicBatcher:
        options: dict[str, Any] = {
            "model": "m", "version": "1", "max_batch_size": 32, "max_queue_delay_ms": 5.0,
            "preferred_batch_sizes": (), "max_queue_size": 64, "pad_values": {},
            "provider": "CPUExecutionProvider",
        }
        batcher = DynamicBatcher(runners=runners, **(options | overrides))
        await batcher.start()
        made.append(batcher)
        gates.extend(r for r in runners if isinstance(r, Gated))
        return batcher

    yield factory
    for gated in gates:
        gated.gate.set()
    for batcher in made:
        await batcher.stop(grace_s=10)


def x_of(items: int, value: float = 1.0, features: int = 4) -> TensorMap:
    return {"x": np.full((items, features), value, np.float32)}


async def hold_first_batch(batcher: DynamicBatcher, gated: Gated) -> asyncio.Task[TensorMap]:
    """Submit a blocker and wait until it is being computed; later submits then queue up."""
    blocker = asyncio.create_task(batcher.submit(x_of(1, -1.0), items=1, timeout_s=30))
    await asyncio.wait_for(gated.entered.wait(), 10)
    return blocker


async def submit_many(
    batcher: DynamicBatcher, counts: Sequence[int], *, timeout_s: float = 30
) -> list[asyncio.Task[TensorMap]]:
    tasks = [asyncio.create_task(batcher.submit(x_of(n, float(i)), items=n, timeout_s=timeout_s))
             for i, n in enumerate(counts)]
    await asyncio.sleep(0)  # let every task run up to its enqueue
    return tasks


async def test_a_lone_request_runs_at_once(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    batcher = await make_batcher([sessions["batch"].run], max_queue_delay_ms=3_600_000)
    # a wait for the one-hour delay would time out here; the bound is far above any loaded machine's compute
    out = await asyncio.wait_for(batcher.submit(x_of(3), items=3, timeout_s=3_600), 120)
    assert out["batch"].tolist() == [3, 3, 3]
    np.testing.assert_array_equal(out["y"], np.full((3, 4), 2.0, np.float32))


async def test_concurrent_requests_share_one_batch_counting_items(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_queue_delay_ms=1)
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1, 3, 2, 1])
    assert batcher.depth == 4
    gated.gate.set()
    results = await asyncio.gather(*tasks)
    assert (await blocker)["batch"].tolist() == [1]
    for n, out in zip([1, 3, 2, 1], results, strict=True):
        assert out["batch"].tolist() == [7] * n  # one batch of 7 items, not 4 requests
        assert out["y"].shape == (n, 4)


async def test_batches_are_cut_at_max_batch_size(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_batch_size=4, max_queue_delay_ms=1)
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [2, 2, 1, 3, 1, 2])
    gated.gate.set()
    sizes = [int(out["batch"][0]) for out in await asyncio.gather(*tasks)]
    await blocker
    assert sizes == [4, 4, 4, 4, 3, 3]  # FIFO: [2, 2] [1, 3] [1, 2]; never more than 4 items


async def test_preferred_batch_size_cuts_early(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher(
        [gated], max_batch_size=32, preferred_batch_sizes=[2, 4], max_queue_delay_ms=1)
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1] * 6)
    gated.gate.set()
    sizes = [int(out["batch"][0]) for out in await asyncio.gather(*tasks)]
    await blocker
    assert sizes == [4, 4, 4, 4, 2, 2]  # the largest preferred size first, then the rest


def test_preferred_cut_takes_the_largest_reachable_prefix() -> None:
    assert preferred_cut([1, 1, 1, 1, 1], {2, 4}) == 4
    assert preferred_cut([3, 3], {4}) == 0
    assert preferred_cut([2, 2, 3], {4, 7}) == 3


async def test_queue_delay_is_measured_from_the_oldest_request(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    """A steady stream must not keep a batch open: the oldest request leaves after about the delay.

    With the delay restarted on every arrival (MLServer #1936, #2065) the batch would stay open
    until max_batch_size (1000 items at ~200 items/s: 5 s).
    """
    batcher = await make_batcher([sessions["batch"].run], max_batch_size=1000, max_queue_delay_ms=300)
    submitted: list[asyncio.Task[TensorMap]] = []
    stop = asyncio.Event()

    async def stream() -> None:  # pairs, so the worker sees concurrent traffic and waits for more
        while not stop.is_set():
            submitted.extend(
                asyncio.create_task(batcher.submit(x_of(1), items=1, timeout_s=60)) for _ in range(2))
            await asyncio.sleep(0.01)  # pacing of the traffic, not synchronisation

    producer = asyncio.create_task(stream())
    while not submitted:
        await asyncio.sleep(0)
    oldest = await submitted[0]
    stop.set()
    await producer
    await asyncio.gather(*submitted)
    # the batch size tells, not the clock: a slower machine sends fewer pairs per delay, never 500 items
    assert 2 <= int(oldest["batch"][0]) < 500


async def test_a_busy_worker_does_not_restart_the_delay(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    """Requests that already waited past max_queue_delay while the model was busy run right away."""
    delay_s = 2.0
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_queue_delay_ms=int(delay_s * 1000))
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1, 1])
    await asyncio.sleep(delay_s + 0.2)  # the subject here is elapsed time: let both pass their delay
    gated.gate.set()
    # An ordering, not a stopwatch: a delay restarted at the take finishes them no sooner than one
    # whole delay after the release, so they must finish before a timer of one delay started now;
    # a slow machine has that whole delay (not a fraction of it) to run the two batches.
    _, late = await asyncio.wait(tasks, timeout=delay_s)
    await asyncio.gather(blocker, *tasks)
    assert not late, "the jobs waited another max_queue_delay after the busy worker took them"


async def test_full_queue_refuses_at_once(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_queue_size=2)
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1, 1])
    with pytest.raises(QueueFull, match="max_queue_size 2") as info:
        await asyncio.wait_for(batcher.submit(x_of(1), items=1, timeout_s=30), 5)
    assert info.value.headers["Retry-After"] == "1" and info.value.status == 503
    gated.gate.set()
    await asyncio.gather(blocker, *tasks)


async def test_a_timed_out_request_is_not_computed(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated])
    blocker = await hold_first_batch(batcher, gated)
    patient = asyncio.create_task(batcher.submit(x_of(1, 7.0), items=1, timeout_s=30))
    with pytest.raises(RequestTimeout, match="did not answer within 0.2 s") as info:
        await batcher.submit(x_of(1, 42.0), items=1, timeout_s=0.2)
    assert info.value.status == 504
    gated.gate.set()
    await blocker
    assert (await patient)["batch"].tolist() == [1]  # the timed-out request did not join its batch
    assert not gated.seen(42.0)


async def test_a_failing_batch_fails_all_its_jobs_and_the_worker_survives(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop(), fail_on=13.0)
    batcher = await make_batcher([gated])
    blocker = await hold_first_batch(batcher, gated)
    doomed = [asyncio.create_task(batcher.submit(x_of(1, v), items=1, timeout_s=30))
              for v in (13.0, 1.0, 2.0)]
    await asyncio.sleep(0)
    gated.gate.set()
    await blocker
    errors = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(e, InferenceFailed) for e in errors)
    assert len({id(e) for e in errors}) == 3  # one error object per request (issue 10): tracebacks stay apart
    assert all("the model refused this batch" in str(e) for e in errors)
    out = await batcher.submit(x_of(2), items=2, timeout_s=30)
    assert out["batch"].tolist() == [2, 2]


async def test_outputs_without_one_row_per_item_fail_the_batch(make_batcher: MakeBatcher) -> None:
    def wrong_rows(inputs: TensorMap) -> TensorMap:
        return {"y": np.zeros((1, 4), np.float32)}

    batcher = await make_batcher([wrong_rows])
    with pytest.raises(InferenceFailed, match=r"output 'y' has shape \[1, 4\] but the batch had 3 items"):
        await batcher.submit(x_of(3), items=3, timeout_s=30)


async def test_answers_match_each_request_own_random_input(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    weights, bias = classifier_weights()
    rng = np.random.default_rng(7)
    batcher = await make_batcher([sessions["classifier"].run], max_batch_size=8, max_queue_delay_ms=20)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(40)]
    outs = await asyncio.gather(*(batcher.submit({"x": x}, items=len(x), timeout_s=30) for x in inputs))
    for x, out in zip(inputs, outs, strict=True):
        np.testing.assert_allclose(out["logits"], x @ weights + bias, atol=1e-5)


async def test_ragged_requests_padded_together_match_unbatched_answers(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["ragged"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], pad_values={"x": 0.0})
    rng = np.random.default_rng(3)
    blocker = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, items=1, timeout_s=30))
    await asyncio.wait_for(gated.entered.wait(), 10)
    inputs = [rng.normal(size=(2, int(t))).astype(np.float32) for t in (3, 9, 1, 5)]
    tasks = [asyncio.create_task(batcher.submit({"x": x}, items=2, timeout_s=30)) for x in inputs]
    await asyncio.sleep(0)
    gated.gate.set()
    outs = await asyncio.gather(*tasks)
    await blocker
    assert gated.batches[-1]["x"].shape == (8, 9)  # one padded batch
    for x, out in zip(inputs, outs, strict=True):
        np.testing.assert_allclose(out["s"], sessions["ragged"].run({"x": x})["s"], atol=1e-5)


async def test_ragged_requests_without_pad_value_batch_by_shape_in_fifo_order(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["ragged"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], pad_values={"x": None})
    blocker = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, items=1, timeout_s=30))
    await asyncio.wait_for(gated.entered.wait(), 10)
    lengths = [3, 5, 3, 5, 4]
    tasks = [asyncio.create_task(batcher.submit({"x": np.ones((1, t), np.float32)}, items=1, timeout_s=30))
             for t in lengths]
    await asyncio.sleep(0)
    gated.gate.set()
    outs = await asyncio.gather(*tasks)
    await blocker
    assert [float(o["s"][0]) for o in outs] == [float(t) for t in lengths]
    assert [b["x"].shape for b in gated.batches[1:]] == [(2, 3), (2, 5), (1, 4)]


async def test_batching_off_runs_each_request_alone_untouched(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_batch_size=0)
    blocker = await hold_first_batch(batcher, gated)
    requests = [x_of(n) for n in (2, 3)]
    tasks = [asyncio.create_task(batcher.submit(r, items=1, timeout_s=30)) for r in requests]
    await asyncio.sleep(0)
    gated.gate.set()
    outs = await asyncio.gather(*tasks)
    await blocker
    assert [o["batch"].tolist() for o in outs] == [[2, 2], [3, 3, 3]]
    assert gated.batches[1]["x"] is requests[0]["x"]


async def test_instances_run_batches_in_parallel(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    barrier = threading.Barrier(2, timeout=20)

    def meet_then_run(inputs: TensorMap) -> TensorMap:
        barrier.wait()  # breaks (and the batch fails) unless two batches run at the same time
        return sessions["batch"].run(inputs)

    batcher = await make_batcher([meet_then_run, meet_then_run], max_batch_size=0)
    outs = await asyncio.gather(*(batcher.submit(x_of(1), items=1, timeout_s=30) for _ in range(2)))
    assert [o["batch"].tolist() for o in outs] == [[1], [1]]


async def test_stop_finishes_queued_requests_and_refuses_new_ones(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated], max_batch_size=2)
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1, 1, 1])
    stopping = asyncio.create_task(batcher.stop(grace_s=30))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        await batcher.submit(x_of(1), items=1, timeout_s=30)
    gated.gate.set()
    outs = await asyncio.gather(blocker, *tasks)
    await stopping
    assert [int(o["batch"][0]) for o in outs] == [1, 2, 2, 1]


async def test_stop_fails_what_the_grace_period_did_not_cover(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    gated = Gated(sessions["batch"].run, asyncio.get_running_loop())
    batcher = await make_batcher([gated])
    blocker = await hold_first_batch(batcher, gated)
    tasks = await submit_many(batcher, [1, 1])
    await batcher.stop(grace_s=0.1)
    results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert batcher.depth == 0


class Where:
    """A runner that records the thread of every call, optionally sleeping first (a slow model)."""

    def __init__(self, run: Runner, *, sleep_s: float = 0.0) -> None:
        self.run, self.sleep_s = run, sleep_s
        self.threads: list[str] = []

    def __call__(self, inputs: TensorMap) -> TensorMap:
        self.threads.append(threading.current_thread().name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.run(inputs)


LOOP_THREAD = threading.main_thread().name


async def test_a_lone_request_on_an_idle_server_runs_on_the_event_loop_when_the_model_is_fast(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    fast = Where(sessions["batch"].run)
    batcher = await make_batcher([fast])
    for value in range(50):  # one at a time: the first run measures (in the thread), then inline
        out = await batcher.submit(x_of(2, value), items=2, timeout_s=30)
        np.testing.assert_array_equal(out["y"], np.full((2, 4), 2 * value, np.float32))
        if fast.threads[-1] == LOOP_THREAD:
            break  # (a loaded machine may take over INLINE_MAX_S for a thread round trip: then again)
    assert fast.threads[0] != LOOP_THREAD
    assert fast.threads[-1] == LOOP_THREAD
    await batcher.submit(x_of(2), items=2, timeout_s=30)  # measured inline (~0.1 ms): inline again
    assert fast.threads[-1] == LOOP_THREAD
    await batcher.submit(x_of(3), items=3, timeout_s=30)  # a larger input than the one measured
    assert fast.threads[-1] != LOOP_THREAD
    with metrics.track(metrics.V2_INFER, "m", "1"), metrics.track(metrics.V2_INFER, "m", "1"):
        await batcher.submit(x_of(2), items=2, timeout_s=30)  # other requests in flight: not alone
    assert fast.threads[-1] != LOOP_THREAD


async def test_a_slow_model_always_runs_in_its_thread(
    make_batcher: MakeBatcher, sessions: dict[str, OnnxSession]
) -> None:
    slow = Where(sessions["batch"].run, sleep_s=3 * INLINE_MAX_S)
    batcher = await make_batcher([slow])
    for _ in range(3):
        await batcher.submit(x_of(1), items=1, timeout_s=30)
    assert LOOP_THREAD not in slow.threads and len(slow.threads) == 3
