"""ModelRegistry: (name, version) -> LoadedModel, with its sessions, batcher, state and load error.

Loading is slow (session creation, warm-up), so it runs in a small bounded thread pool while the
event loop keeps answering. A reload swaps a model's versions atomically: requests already queued
finish on the old sessions (the old batcher is drained, then stopped) and none fail. A model that
fails to load is state (UNAVAILABLE + reason), never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TypeVar

from service import log, metrics
from service.batching.batcher import DynamicBatcher, Priority
from service.errors import (
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
    add_path_root,
    redact_paths,
)
from service.repository.config import ModelConfig, TensorSpec
from service.repository.scan import ModelSpec, complete_config, scan
from service.repository.sidefiles import check_side_files
from service.runtime.session import OnnxSession
from service.settings import Settings
from service.types import NUMPY_DTYPES, Tensor, TensorMap

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

LOAD_THREADS = 2  # session creation is CPU-heavy; a couple at a time keeps the server answering


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class RepositoryEntry:
    """One model version on disk, for the repository index."""

    name: str
    version: str
    state: ModelState
    reason: str = ""


class LoadedModel:
    """One model version: its config (as served), state, sessions and batcher."""

    def __init__(self, spec: ModelSpec, *, default_timeout_s: float, grace_s: float) -> None:
        self.name = spec.name
        self.version = str(spec.version)
        self.path = spec.path
        self.config: ModelConfig = spec.config or ModelConfig()
        self.state = ModelState.LOADING
        self.error: str | None = None
        self.providers: list[str] = []
        self.load_ms = 0.0
        self.unloaded = False
        self.replacement: LoadedModel | None = None
        """The reload of this same version that took over; requests that raced the swap go there."""
        self._sessions: list[OnnxSession] = []
        self._batcher: DynamicBatcher | None = None
        self._default_timeout_s = default_timeout_s
        self._grace_s = grace_s
        self._runs = RunTracker(f"model '{spec.name}' version {spec.version}")

    @property
    def runs_in_flight(self) -> int:
        """ONNX Runtime runs of this version computing now (in batcher threads)."""
        return self._runs.running

    @property
    def provider(self) -> str:
        """The provider really in use (first of session.get_providers()), or '-' when not loaded."""
        return self.providers[0] if self.providers else "-"

    def side_file(self, name: str) -> Path:
        """A file beside model.onnx (tokenizer.json, labels.txt); it may not exist."""
        path = self.path.parent / name
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"side file name '{name}' must be a plain file name")
        return path

    async def infer(self, inputs: TensorMap, *, timeout_s: float | None = None,
                    priority: Priority = Priority.NORMAL) -> TensorMap:
        """Validate, queue, wait: every output by name.

        Raises InvalidInput (names the field, rule and value), ModelNotReady, and what
        DynamicBatcher.submit raises. Nothing is awaited before the request is queued, so a
        request that holds this model when it is swapped out is still served.
        """
        log.model_name.set(self.name)
        log.model_version.set(self.version)
        batcher = self._batcher
        if self.state is not ModelState.READY or batcher is None:
            if self.replacement is not None:
                return await self.replacement.infer(inputs, timeout_s=timeout_s, priority=priority)
            if self.unloaded:  # it raced an unload: answered as ModelRegistry.get answers it from now on
                raise _unloaded(self.name)
            raise ModelNotReady(f"model '{self.name}' version {self.version} is {self.state}: {self.error}")
        items = check_inputs(self.name, self.config, inputs)
        timeout = timeout_s or self.config.request_timeout_s or self._default_timeout_s
        try:
            return await batcher.submit(inputs, items=items, timeout_s=timeout, priority=priority)
        except ShuttingDown:
            if self.replacement is not None:
                return await self.replacement.infer(inputs, timeout_s=timeout_s, priority=priority)
            if self.unloaded:
                raise _unloaded(self.name) from None
            raise

    # ---- lifecycle (driven by ModelRegistry) ---------------------------------------------------

    def build(self, spec: ModelSpec, settings: Settings) -> None:
        """Create the sessions and the served config; slow, runs in a load thread. Failures -> state."""
        started = time.perf_counter()
        if spec.error:
            self._fail(spec.error)
            return
        try:
            base = spec.config or ModelConfig()
            preference = base.providers or settings.providers
            first = OnnxSession.load(spec.path, config=base, providers=preference)
            self.config = complete_config(
                base, inputs=first.inputs, outputs=first.outputs, folder=spec.path.parent
            )
            # the GPU's memory caps the batch size
            if first.batch_cap is not None and first.batch_cap < (self.config.max_batch_size or 0):
                self.config = self.config.model_copy(
                    update={
                        "max_batch_size": first.batch_cap,
                        "preferred_batch_sizes": [
                            p for p in self.config.preferred_batch_sizes if p <= first.batch_cap
                        ],
                    }
                )
        except Exception as exc:  # ONNX Runtime raises its own types; any failure is this version's state
            self._fail(f"{spec.path}: {_one_line(exc)}")
            return
        # tokenizer, labels, vocabulary: now, not per request
        problem = check_side_files(self.config, spec.path.parent)
        if problem is not None:
            self._fail(problem)
            return
        try:
            extra = [
                OnnxSession.load(spec.path, config=base, providers=preference)
                for _ in range(base.instances - 1)
            ]
        except Exception as exc:
            self._fail(f"{spec.path}: {_one_line(exc)}")
            return
        self._sessions = [first, *extra]
        self.providers = first.providers
        self.load_ms = (time.perf_counter() - started) * 1000

    async def start(self) -> None:
        """Start the batcher of a built model and mark it READY (inside the event loop)."""
        if self.state is ModelState.UNAVAILABLE or not self._sessions:
            return
        config = self.config
        self._batcher = DynamicBatcher(
            model=self.name, version=self.version, runners=[self._runs.track(s.run) for s in self._sessions],
            max_batch_size=config.max_batch_size or 0, max_queue_delay_ms=config.max_queue_delay_ms,
            preferred_batch_sizes=config.preferred_batch_sizes, max_queue_size=config.max_queue_size,
            pad_values={spec.name: spec.pad_value for spec in config.inputs}, provider=self.provider,
        )
        await self._batcher.start()
        self.state = ModelState.READY
        batching = f"on (max {config.max_batch_size})" if config.batching else "off"
        logger.info("loaded model '%s' version %s: providers %s, batching %s, instances %d, %.1f ms",
                    self.name, self.version, self.providers, batching, config.instances, self.load_ms)
        metrics.MODEL_LOAD_TIME.labels(self.name, self.version, self.provider).observe(self.load_ms / 1000)
        metrics.MODEL_READY.labels(self.name, self.version, self.provider).set(1)

    async def stop(self, *, reason: str) -> None:
        """Not ready from now on; queued and running requests finish (within the grace period)."""
        if self.state is ModelState.READY:
            metrics.MODEL_READY.labels(self.name, self.version, self.provider).set(0)
        self.state, self.error = ModelState.UNAVAILABLE, reason
        if self._batcher is not None:
            await self._batcher.stop(grace_s=self._grace_s)
            running = self._runs.abandon()
            if running:
                logger.warning(
                    "model '%s' version %s (%s): %d ONNX Runtime run(s) still computing after the %g s grace "
                    "period; their requests go to the replacement or get an error, and the runs are "
                    "abandoned: they finish in the background and their results "
                    "are dropped (raise DEEPSERVE_SHUTDOWN_GRACE_S to let them end)",
                    self.name,
                    self.version,
                    reason,
                    running,
                    self._grace_s,
                )
        self._batcher, self._sessions = None, []

    def _fail(self, reason: str) -> None:
        reason = redact_paths(reason)  # shown in metadata and the repository index: relative paths only
        self.state, self.error = ModelState.UNAVAILABLE, reason
        logger.warning("model '%s' version %s failed to load: %s", self.name, self.version, reason)
        metrics.MODEL_READY.labels(self.name, self.version, "-").set(0)


def _unloaded(name: str) -> ModelNotFound:
    return ModelNotFound(f"model '{name}' is unloaded; load it through the repository API to serve it")


class RunTracker:
    """Counts the ONNX Runtime runs in progress (they run in threads the event loop cannot cancel), so a
    stop can say what is still computing when its grace period ends, and log when abandoned runs end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.running = 0
        self._lock = threading.Lock()
        self._abandoned_at: float | None = None

    def track(self, run: Callable[[TensorMap], TensorMap]) -> Callable[[TensorMap], TensorMap]:
        def tracked(inputs: TensorMap) -> TensorMap:
            with self._lock:
                self.running += 1
            try:
                return run(inputs)
            finally:
                with self._lock:
                    self.running -= 1
                    late = self._abandoned_at if self.running == 0 else None
                if late is not None:
                    logger.warning(
                        "%s: the abandoned ONNX Runtime run(s) ended %.2f s after the grace period",
                        self.name,
                        time.monotonic() - late,
                    )

        return tracked

    def abandon(self) -> int:
        """The number of runs still in progress; from now on their end is logged."""
        with self._lock:
            if self.running:
                self._abandoned_at = time.monotonic()
            return self.running


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)  # noise before ONNX Runtime's own words
    return text if len(text) <= 500 else text[:497] + "..."


# ---- request validation (before queueing) -------------------------------------------------------


_DATATYPE_OF_DTYPE = {dtype: datatype for datatype, dtype in reversed(NUMPY_DTYPES.items())}
"""numpy dtype -> v2 datatype (the first name listed wins where two share a dtype)."""


def _datatype_of(array: Tensor) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    return _DATATYPE_OF_DTYPE.get(array.dtype) or str(array.dtype)


def _check_tensor(model: str, spec: TensorSpec, array: Tensor, *, batching: bool) -> None:
    actual = _datatype_of(array)
    if actual != spec.datatype:
        raise InvalidInput(
            f"input '{spec.name}' has datatype {actual} but model '{model}' expects {spec.datatype}"
        )
    shape, want = list(array.shape), spec.shape
    if len(shape) == len(want) and all(w < 0 or w == s for s, w in zip(shape, want, strict=True)):
        return
    if batching and len(shape) == len(want) - 1:
        hint = "; add the batch axis"
    elif len(shape) != len(want):
        hint = f"; it needs {len(want)} dimensions"
    else:
        axis = next(i for i, (s, w) in enumerate(zip(shape, want, strict=True)) if w >= 0 and w != s)
        hint = f"; axis {axis} must be {want[axis]}"
    raise InvalidInput(f"input '{spec.name}' has shape {shape} but model '{model}' expects {want}{hint}")


def check_inputs(model: str, config: ModelConfig, inputs: TensorMap) -> int:
    """Names, datatypes and shapes against the served config; returns the item count (axis 0).

    Raises InvalidInput naming the field, the rule and the value.
    """
    expected = {spec.name: spec for spec in config.inputs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(f"model '{model}' has no input '{unknown[0]}'; its inputs are {list(expected)}")
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInput(f"input '{missing[0]}' is missing; model '{model}' needs {list(expected)}")
    for name, spec in expected.items():
        _check_tensor(model, spec, inputs[name], batching=config.batching)
    if not config.batching or not expected:
        return 1
    counts = {name: int(inputs[name].shape[0]) for name in expected}
    if len(set(counts.values())) > 1:
        raise InvalidInput(
            f"inputs disagree on the batch axis (axis 0): {counts}; send the same number of items"
        )
    items = next(iter(counts.values()))
    limit = config.max_batch_size or 0
    if items == 0:
        raise InvalidInput(f"the request has 0 items on the batch axis; model '{model}' needs at least 1")
    if items > limit:
        raise InvalidInput(
            f"the request has {items} items but model '{model}' takes at most {limit} per batch "
            "(max_batch_size); split it into smaller requests"
        )
    return items


# ---- the registry -------------------------------------------------------------------------------


def _canonical(version: str) -> str:
    return str(int(version)) if version.isascii() and version.isdigit() else version


class ModelRegistry:
    """Every model version the server knows: ready, loading, or unavailable with a reason."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        add_path_root(settings.model_repository)  # error messages show paths relative to the repository
        self._models: dict[str, dict[str, LoadedModel]] = {}  # replaced whole on reload: atomic swap
        self._locks: dict[str, asyncio.Lock] = {}
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Scan the repository and load every model (or Settings.load_models); failures become state.

        Raises ValueError when the repository folder does not exist.
        """
        self._executor = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="deepserve-load")
        repo, only = self._settings.model_repository, self._settings.load_models
        specs = await self._in_thread(partial(scan, repo, only=only))
        by_model: dict[str, list[ModelSpec]] = {}
        for spec in specs:
            by_model.setdefault(spec.name, []).append(spec)
        await asyncio.gather(*(self._install(name, group) for name, group in by_model.items()))
        ready = [m for m in self.models() if m.state is ModelState.READY]
        logger.info("%d of %d model versions ready from %s", len(ready), len(self.models()), repo)

    async def stop(self) -> None:
        """Drain every batcher (within Settings.shutdown_grace_s) and release the sessions."""
        await asyncio.gather(*(m.stop(reason="the server is stopping") for m in self.models()))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def find(self, name: str, version: str | None = None) -> LoadedModel:
        """The model version in any state (None: the highest ready one, else the highest)."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found; models: {sorted(self._models)}")
        if version is None:
            ready = [m for m in versions.values() if m.state is ModelState.READY]
            return max(ready or versions.values(), key=lambda m: int(m.version))
        model = versions.get(_canonical(version))
        if model is None:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; its versions are {sorted(versions, key=int)}"
            )
        return model

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The READY model version (None: the highest ready). Raises ModelNotFound / ModelNotReady."""
        model = self.find(name, version)
        if model.state is ModelState.READY:
            return model
        if model.unloaded:
            raise _unloaded(name)
        if version is None:
            states = "; ".join(
                f"version {m.version} is {m.state}: {m.error or 'loading'}"
                for m in self._models[name].values()
            )
            raise ModelNotReady(f"model '{name}' has no ready version ({states})")
        raise ModelNotReady(
            f"model '{name}' version {model.version} is {model.state}: {model.error or 'loading'}"
        )

    def models(self) -> list[LoadedModel]:
        """Every model version in the registry, by name then version."""
        found = [m for versions in self._models.values() for m in versions.values()]
        return sorted(found, key=lambda m: (m.name, int(m.version)))

    def index(self) -> list[RepositoryEntry]:
        """Every model version on disk or in memory, with its state and the reason it is not ready."""
        entries: dict[tuple[str, str], RepositoryEntry] = {}
        try:
            on_disk = scan(self._settings.model_repository, include_unserved=True)
        except ValueError:
            on_disk = []
        for spec in on_disk:
            reason = redact_paths(
                spec.error or ("not loaded" if spec.served else "not served by the version policy")
            )
            entries[spec.name, str(spec.version)] = RepositoryEntry(
                spec.name, str(spec.version), ModelState.UNAVAILABLE, reason
            )
        for m in self.models():
            entries[m.name, m.version] = RepositoryEntry(m.name, m.version, m.state, m.error or "")
        return sorted(entries.values(), key=lambda e: (e.name, int(e.version)))

    async def load(self, name: str) -> None:
        """(Re)load a model from disk; its versions swap atomically and no queued request fails.

        Raises ModelNotFound when the repository has no servable version of it, ModelLoadError
        when a version failed (a failed reload keeps the previous load of that version serving).
        """
        repo = self._settings.model_repository
        specs = await self._in_thread(partial(scan, repo, only=[name]))
        if not specs:
            raise ModelNotFound(
                f"model '{name}' has no version in {repo} (expected {repo}/{name}/<version>/model.onnx)"
            )
        failed = await self._install(name, specs)
        if failed:
            problems = "; ".join(f"version {m.version}: {m.error}" for m in failed)
            serving = sorted(
                (m.version for m in self._models[name].values() if m.state is ModelState.READY), key=int
            )
            raise ModelLoadError(f"model '{name}' failed to load ({problems}); versions serving: {serving}")

    async def unload(self, name: str) -> None:
        """New requests are refused from now on; queued and running ones finish."""
        # checked before taking a lock: an unknown name must leave nothing behind
        if name not in self._models:
            raise ModelNotFound(f"model '{name}' is not loaded; models: {sorted(self._models)}")
        async with self._lock(name):
            versions = self._models.get(name)
            if not versions:
                raise ModelNotFound(f"model '{name}' is not loaded; models: {sorted(self._models)}")
            for model in versions.values():
                model.unloaded = True
            await asyncio.gather(*(m.stop(reason="unloaded") for m in versions.values()))
            logger.info("unloaded model '%s'", name)

    # ---- internals ------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _in_thread(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _install(self, name: str, specs: Sequence[ModelSpec]) -> list[LoadedModel]:
        """Build the versions in load threads, then swap them in; returns the versions that failed."""
        settings = self._settings
        async with self._lock(name):
            current = self._models.get(name, {})
            built = {
                str(s.version): LoadedModel(s, default_timeout_s=settings.request_timeout_s,
                                            grace_s=settings.shutdown_grace_s)
                for s in specs
            }
            # new versions show as LOADING meanwhile; current ones keep serving
            self._models[name] = {**{v: m for v, m in built.items() if v not in current}, **current}
            await asyncio.gather(
                *(self._in_thread(partial(built[str(s.version)].build, s, settings)) for s in specs)
            )
            for model in built.values():
                await model.start()
            final = _choose(current, built)
            self._models[name] = final
            await self._retire(current, final)
            return [m for m in built.values() if m.state is not ModelState.READY]

    async def _retire(self, current: dict[str, LoadedModel], final: dict[str, LoadedModel]) -> None:
        kept = {id(m) for m in final.values()}
        retired = [m for m in current.values() if id(m) not in kept]
        for old in retired:
            successor = final.get(old.version)
            if successor is not None and successor.state is ModelState.READY:
                old.replacement = successor
        await asyncio.gather(*(m.stop(reason="replaced by a newer load") for m in retired))


def _choose(current: dict[str, LoadedModel], built: dict[str, LoadedModel]) -> dict[str, LoadedModel]:
    """A failed reload keeps the old ready version; a model with nothing ready keeps serving the old."""
    final: dict[str, LoadedModel] = {}
    for version, new in built.items():
        old = current.get(version)
        keep_old = new.state is not ModelState.READY and old is not None and old.state is ModelState.READY
        final[version] = old if keep_old and old is not None else new
    if not any(m.state is ModelState.READY for m in final.values()):
        for version, old in current.items():
            if old.state is ModelState.READY:
                final.setdefault(version, old)
    return dict(sorted(final.items(), key=lambda item: int(item[0])))
