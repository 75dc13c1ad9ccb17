"""DynamicBatcher: one bounded queue and one worker task per model version.

Handlers only enqueue a `Job` and await its future (`submit`). The worker owns the queue: it takes
the oldest job, adds compatible jobs that are already queued, and only when other requests were
waiting (evidence of concurrent traffic) waits for more until the *oldest* job has waited
`max_queue_delay_ms` (MLServer measured from the newest for years: issues #1936, #2065, PR #2093).
An idle server runs a lone request at once. Batches run in a thread pool sized to the number of
runners (model instances); jobs that timed out or were cancelled are dropped before computing.

Two priority lanes share the queue: `Priority.NORMAL` (/predict, /v2 infer) and `Priority.LOW`
(explanations: hundreds of perturbed copies). A batch starts from the oldest normal job when there is
one and takes normal jobs before low ones, so a burst of low-priority work delays ordinary traffic by
at most the batch being computed. Each lane is bounded by `max_queue_size` on its own, so low-priority
work can never make ordinary requests fail with QueueFull.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum

from service import metrics
from service import timing as request_timing
from service.batching.assemble import batch_key, split, stack
from service.errors import InferenceFailed, QueueFull, RequestTimeout, ServiceError, ShuttingDown
from service.timing import RequestTiming
from service.types import TensorMap

logger = logging.getLogger(__name__)

Runner = Callable[[TensorMap], TensorMap]

INLINE_MAX_S = 0.001
"""A lone request on an otherwise idle server runs on the event-loop thread, not in the runner thread,
when the model's last lone run took less than this on an input at least as large (numeric tensors only:
a string's cost is not its array's size). The hand-off to the thread and back cost ~270 µs of a 1x28x28
CNN's 1.01 ms p50 at one request at a time (its run takes ~90 µs); with nothing else in flight, holding
the loop that long delays nobody, and a model or an input slower than this runs in the thread (a health
probe must not wait behind a 3 s batch)."""


class Priority(IntEnum):
    """Queue lane of a job; lower values are served first."""

    NORMAL = 0
    LOW = 1


@dataclass(slots=True)
class Job:
    """One request waiting for its batch; `items` is its length on the batch axis."""

    inputs: TensorMap
    items: int
    deadline: float
    """time.monotonic() after which the request has timed out and must not be computed."""
    future: asyncio.Future[TensorMap]
    key: Hashable = None
    """assemble.batch_key: only jobs with equal keys share a batch."""
    enqueued_at: float = field(default_factory=time.monotonic)
    priority: Priority = Priority.NORMAL
    timing: RequestTiming | None = None
    """The handler's `service.timing` record, if it started one: gets this job's queue and compute time."""


def _numeric_bytes(inputs: TensorMap) -> int | None:
    """The inputs' size, or None when one holds strings (their cost is not the array's size)."""
    total = 0
    for array in inputs.values():
        if array.dtype.kind in "OSU":
            return None
        total += array.nbytes
    return total


class _Lanes:
    """The job queue: one FIFO per priority; `get` serves the most urgent lane first.

    Single consumer (the worker); `get` waits on an event set by every put, it never polls.
    """

    def __init__(self) -> None:
        self._lanes: tuple[deque[Job], ...] = tuple(deque() for _ in Priority)
        self._arrived = asyncio.Event()

    def qsize(self, priority: Priority | None = None) -> int:
        if priority is not None:
            return len(self._lanes[priority])
        return sum(len(lane) for lane in self._lanes)

    def empty(self) -> bool:
        return not any(self._lanes)

    def has(self, priority: Priority) -> bool:
        return bool(self._lanes[priority])

    def put_nowait(self, job: Job) -> None:
        self._lanes[job.priority].append(job)
        self._arrived.set()

    def get_nowait(self, priority: Priority | None = None) -> Job:
        lanes = self._lanes if priority is None else (self._lanes[priority],)
        for lane in lanes:
            if lane:
                return lane.popleft()
        raise asyncio.QueueEmpty

    async def get(self) -> Job:
        while self.empty():
            self._arrived.clear()
            await self._arrived.wait()
        return self.get_nowait()


def preferred_cut(counts: Sequence[int], preferred: Collection[int]) -> int:
    """How many leading jobs add up to the largest preferred batch size reachable; 0 if none."""
    best, total = 0, 0
    for index, count in enumerate(counts, start=1):
        total += count
        if total in preferred:
            best = index
    return best


@dataclass(slots=True)
class _Forming:
    """The batch being collected: jobs of one key, up to `limit` items, in arrival order."""

    key: Hashable
    limit: int
    jobs: list[Job]
    items: int
    closed: bool = False  # a compatible job did not fit: stop here to keep FIFO order

    @property
    def full(self) -> bool:
        return self.closed or self.items >= self.limit

    def offer(self, job: Job) -> bool:
        if self.closed or job.key != self.key:
            return False
        if self.items + job.items > self.limit:
            self.closed = True
            return False
        self.jobs.append(job)
        self.items += job.items
        return True


class DynamicBatcher:
    """Server-side dynamic batching for one model version; see the module docstring."""

    def __init__(self, *, model: str, version: str, runners: Sequence[Runner], max_batch_size: int,
                 max_queue_delay_ms: float, preferred_batch_sizes: Sequence[int], max_queue_size: int,
                 pad_values: Mapping[str, float | None], provider: str) -> None:
        if not runners:
            raise ValueError("DynamicBatcher needs at least one runner")
        self.model, self.version, self.provider = model, version, provider
        self._runners = list(runners)
        self._max_batch = max_batch_size
        self._delay_s = max_queue_delay_ms / 1000.0
        self._preferred = frozenset(preferred_batch_sizes)
        self._max_queue = max_queue_size
        self._pad = dict(pad_values)
        self._pending: deque[Job] = deque()  # taken from the queue but deferred (other batch key)
        self._futures: set[asyncio.Future[TensorMap]] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._lone_s = float("inf")  # the last lone job's run time (thread round trip included) ...
        self._lone_bytes = 0  # ... on inputs of this many bytes
        # created in start(), inside the running loop
        self._queue: _Lanes | None = None
        self._idle: asyncio.Queue[Runner] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._queue_time = metrics.QUEUE_TIME.labels(model, version)
        self._compute_time = metrics.COMPUTE_TIME.labels(model, version, provider)
        self._batch_size = metrics.BATCH_SIZE.labels(model, version)
        self._depth_gauge = metrics.QUEUE_DEPTH.labels(model, version)

    @property
    def depth(self) -> int:
        """Jobs waiting (queued or deferred), not counting batches being computed."""
        return (self._queue.qsize() if self._queue else 0) + len(self._pending)

    def lane_depth(self, priority: Priority) -> int:
        """Jobs of one priority waiting (queued or deferred)."""
        queued = self._queue.qsize(priority) if self._queue else 0
        return queued + sum(1 for job in self._pending if job.priority == priority)

    @property
    def name(self) -> str:
        return f"model '{self.model}' version {self.version}"

    async def start(self) -> None:
        """Create the queue, the runner pool and the worker task (call inside the running loop)."""
        if self._worker is not None:
            return
        self._queue = _Lanes()
        self._idle = asyncio.Queue()
        for runner in self._runners:
            self._idle.put_nowait(runner)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._runners), thread_name_prefix=f"deepserve-{self.model}-{self.version}"
        )
        self._worker = asyncio.create_task(self._work(), name=f"batcher {self.model}/{self.version}")

    async def submit(self, inputs: TensorMap, *, items: int, timeout_s: float,
                     priority: Priority = Priority.NORMAL) -> TensorMap:
        """Queue one request and wait for its share of a batch.

        Raises QueueFull at once when max_queue_size requests of its priority wait, RequestTimeout
        after `timeout_s` (the request is then not computed), InferenceFailed, or ShuttingDown.
        Cancelling the caller cancels the job: a queued job that nobody awaits is never computed.
        """
        if self._closing:
            raise ShuttingDown(f"{self.name} is being unloaded or replaced; retry the request")
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        waiting = self.lane_depth(priority)
        if waiting >= self._max_queue:
            lane = "" if priority is Priority.NORMAL else f"{priority.name.lower()}-priority "
            raise QueueFull(
                f"{self.name} has {waiting} {lane}requests queued (max_queue_size {self._max_queue}); "
                "retry after Retry-After seconds, or raise max_queue_size / instances"
            )
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TensorMap] = loop.create_future()
        key = batch_key(inputs, self._pad) if self._max_batch else None
        job = Job(inputs=inputs, items=items, deadline=now + timeout_s, future=future, key=key,
                  enqueued_at=now, priority=priority, timing=request_timing.current.get())
        self._queue.put_nowait(job)  # cannot overflow: depth was checked above, nothing awaited since
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        self._depth_gauge.set(self.depth)
        # the deadline fails the future itself (a bare timer: asyncio.timeout costs several times more),
        # so the worker skips the job and the waiter gets RequestTimeout
        expiry = loop.call_later(timeout_s, self._expire, future, timeout_s)
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, future: asyncio.Future[TensorMap], timeout_s: float) -> None:
        if not future.done():
            future.set_exception(self._timeout_error(timeout_s))

    async def stop(self, *, grace_s: float) -> None:
        """Refuse new requests, let queued and running ones finish within `grace_s`, then fail the
        rest with ShuttingDown. Safe to call twice."""
        self._closing = True
        if self._worker is None:
            return
        waiting = [f for f in self._futures if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=grace_s)
        self._worker.cancel()
        running = [self._worker, *self._running]
        for task in running:
            task.cancel()
        await asyncio.wait(running)
        for future in list(self._futures):
            if not future.done():
                future.set_exception(ShuttingDown(f"{self.name} stopped before answering; retry the request"))
        self._pending.clear()
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._depth_gauge.set(0)

    # ---- worker ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._idle is not None
        while True:
            runner = await self._idle.get()  # collect only when an instance is free: batches grow
            try:
                batch = await self._collect()
            except Exception:  # the worker must survive anything
                logger.exception("%s: collecting a batch failed", self.name)
                batch = []
            if not batch:
                self._idle.put_nowait(runner)
                continue
            task = asyncio.create_task(self._run(runner, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[Job]:
        """The next batch: the oldest live job plus compatible ones, cut by size, preference or delay."""
        first = await self._next_job()
        if not self._max_batch:
            self._depth_gauge.set(self.depth)
            return [first]
        forming = _Forming(key=first.key, limit=self._max_batch, jobs=[first], items=first.items)
        concurrent = self.depth > 0  # nothing else queued: an idle server runs a lone job at once
        assert self._queue is not None
        for priority in Priority:  # normal jobs fill the batch before low-priority ones
            self._offer_pending(forming, priority)
            while not forming.full and self._queue.has(priority):  # take all that is ready, trim below
                self._route(self._queue.get_nowait(priority), forming)
        if concurrent:
            await self._wait_for_more(forming, deadline=first.enqueued_at + self._delay_s)
        self._depth_gauge.set(self.depth)
        return self._trim(forming)

    async def _next_job(self) -> Job:
        assert self._queue is not None
        while True:
            job = self._take_ready() or await self._queue.get()
            if self._alive(job):
                return job

    def _take_ready(self) -> Job | None:
        """The most urgent waiting job: deferred jobs are older than the queued ones of their lane."""
        assert self._queue is not None
        for priority in Priority:
            for index, job in enumerate(self._pending):
                if job.priority == priority:
                    del self._pending[index]
                    return job
            if self._queue.has(priority):
                return self._queue.get_nowait(priority)
        return None

    async def _wait_for_more(self, forming: _Forming, *, deadline: float) -> None:
        """Take arrivals until the batch is cut or the oldest job's delay is used up. Never polls."""
        assert self._queue is not None
        while not self._cut(forming):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    job = await self._queue.get()
            except TimeoutError:
                return
            self._route(job, forming)

    def _cut(self, forming: _Forming) -> bool:
        if forming.full:
            return True
        return bool(self._preferred) and preferred_cut([j.items for j in forming.jobs], self._preferred) > 0

    def _offer_pending(self, forming: _Forming, priority: Priority) -> None:
        kept: deque[Job] = deque()
        for job in self._pending:
            if job.priority != priority or (self._alive(job) and not forming.offer(job)):
                kept.append(job)
        self._pending = kept

    def _route(self, job: Job, forming: _Forming) -> None:
        if self._alive(job) and not forming.offer(job):
            self._pending.append(job)  # stays ahead of everything still queued: FIFO is kept

    def _trim(self, forming: _Forming) -> list[Job]:
        """Cut at the largest preferred size when more was collected (and max was not reached)."""
        jobs = forming.jobs
        if not self._preferred or forming.items == forming.limit or forming.items in self._preferred:
            return jobs
        keep = preferred_cut([j.items for j in jobs], self._preferred)
        if keep == 0:
            return jobs
        self._pending = deque(sorted([*jobs[keep:], *self._pending], key=lambda j: j.enqueued_at))
        return jobs[:keep]

    def _alive(self, job: Job) -> bool:
        """False for jobs nobody waits for (cancelled, timed out); those are never computed."""
        if job.future.done():
            return False
        if time.monotonic() >= job.deadline:
            job.future.set_exception(self._timeout_error(job.deadline - job.enqueued_at))
            return False
        return True

    def _timeout_error(self, timeout_s: float) -> RequestTimeout:
        return RequestTimeout(
            f"{self.name} did not answer within {timeout_s:g} s ({self.depth} requests queued); "
            "retry later, send smaller requests or raise the timeout"
        )

    # ---- running a batch ------------------------------------------------------------------------

    async def _run(self, runner: Runner, batch: list[Job]) -> None:
        assert self._idle is not None
        try:
            jobs = [job for job in batch if self._alive(job)]  # timed out while the batch formed
            if jobs:
                await self._compute(runner, jobs)
        except Exception as exc:  # never lose a job: anything unexpected fails the whole batch
            logger.exception("%s: running a batch failed", self.name)
            self._fail(batch, InferenceFailed(f"{self.name} failed: {type(exc).__name__}: {exc}"))
        finally:
            self._idle.put_nowait(runner)

    async def _compute(self, runner: Runner, jobs: list[Job]) -> None:
        counts = [job.items for job in jobs]
        started = time.monotonic()
        for job in jobs:
            self._queue_time.observe(started - job.enqueued_at)
        try:
            merged = stack([job.inputs for job in jobs], self._pad) if self._max_batch else jobs[0].inputs
            size = _numeric_bytes(merged) if len(jobs) == 1 else None
            if size is None:
                outputs = await self._in_thread(runner, merged)
            else:
                inline = self._lone_s < INLINE_MAX_S and size <= self._lone_bytes and self._alone()
                outputs = runner(merged) if inline else await self._in_thread(runner, merged)
                self._lone_s, self._lone_bytes = time.monotonic() - started, size
            parts = split(outputs, counts) if self._max_batch else [outputs]
        except ServiceError as exc:
            self._fail(jobs, exc)
            return
        except Exception as exc:
            logger.warning("%s: a batch of %d items failed: %s", self.name, sum(counts), exc)
            self._fail(jobs, InferenceFailed(f"{self.name} failed on a batch of {sum(counts)} items: {exc}"))
            return
        finally:
            self._compute_time.observe(time.monotonic() - started)
            self._batch_size.observe(sum(counts))
        finished = time.monotonic()
        for job, part in zip(jobs, parts, strict=True):
            if job.timing is not None:
                job.timing.add_job(enqueued_at=job.enqueued_at, started_at=started, finished_at=finished)
            if not job.future.done():
                job.future.set_result(part)

    async def _in_thread(self, runner: Runner, merged: TensorMap) -> TensorMap:
        return await asyncio.get_running_loop().run_in_executor(self._executor, runner, merged)

    def _alone(self) -> bool:
        """Nothing else to do: no request in flight but this one (any model), none queued here, no other
        batch of this model running."""
        return metrics.requests_in_flight() <= 1 and self.depth == 0 and len(self._running) <= 1

    @staticmethod
    def _fail(jobs: Sequence[Job], error: ServiceError) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error.copy())  # one object per request: tracebacks stay apart
