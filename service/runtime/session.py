"""OnnxSession: build an ONNX Runtime session from a ModelConfig, warm it up, run it synchronously.

`run` is called from a worker thread by the batcher (one thread per instance, bounded there); it
holds no lock, ONNX Runtime sessions may be run concurrently. The datatype tables here are the
runtime side of the v2 <-> ONNX mapping: ONNX Runtime type strings and the numpy dtypes they take.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import onnxruntime as ort

from service.repository.config import Datatype, ModelConfig, TensorSpec, Warmup
from service.runtime import binding
from service.runtime.providers import describe_fallback, mark_unusable, resolve_providers
from service.types import NUMPY_DTYPES, Tensor, TensorMap

logger = logging.getLogger(__name__)

# ONNX Runtime's NodeArg.type -> Open Inference Protocol datatype
ORT_DATATYPES: dict[str, Datatype] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

assert set(NUMPY_DTYPES) == set(get_args(Datatype))

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: ModelConfig) -> ort.SessionOptions:
    """Threads and graph optimisation from the model config (0 threads: ONNX Runtime decides)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[config.graph_optimization_level]
    if not config.intra_op_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if config.inter_op_threads > 1:  # inter-op threads only matter in parallel execution mode
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return options


def tensor_spec(arg: Any) -> TensorSpec:
    """ONNX Runtime NodeArg -> TensorSpec; symbolic or unknown dims become -1."""
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ValueError(f"tensor '{arg.name}' has type {arg.type}, which the v2 protocol cannot carry")
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or [])]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def zeros_like_spec(spec: TensorSpec) -> Tensor:
    """A zero tensor for warm-up: dynamic dims -> 1, strings -> empty strings."""
    shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])


def warmup_tensor(spec: TensorSpec, value: float | list[Any] | None, *, batch_size: int | None) -> Tensor:
    """Zeros, a constant, or an exact tensor (repeated along axis 0 up to `batch_size`) for warm-up."""
    if value is None:
        return zeros_like_spec(spec)
    if not isinstance(value, list):
        template = zeros_like_spec(spec)
        return np.full(template.shape, value, dtype=template.dtype)
    array = np.asarray(value, dtype=object if spec.datatype == "BYTES" else NUMPY_DTYPES[spec.datatype])
    if batch_size is not None and array.ndim and array.shape[0] == 1 and batch_size > 1:
        array = np.repeat(array, batch_size, axis=0)  # (1, ...) -> (B, ...)
    return array


def _ort_input(array: Tensor) -> Tensor:
    """ONNX Runtime str()-s bytes objects ("b'abc'"); hand it text instead. Other arrays pass as is."""
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8").astype(object)
    if array.dtype == object and array.size and any(isinstance(v, bytes) for v in array.flat):
        decode = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])
        text: Tensor = decode(array)
        return text
    return array


class OnnxSession:
    """One ONNX Runtime session; `providers` is what the session reports, not what was asked for."""

    def __init__(self, session: ort.InferenceSession, *, path: Path) -> None:
        self._session = session
        self.path = path
        self.providers: list[str] = list(session.get_providers())
        self.inputs: list[TensorSpec] = [tensor_spec(arg) for arg in session.get_inputs()]
        self.outputs: list[TensorSpec] = [tensor_spec(arg) for arg in session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]
        self._bound: Callable[[TensorMap], TensorMap] | None = None
        self.binding = "off"
        """How `run` reaches ONNX Runtime: "off" (session.run), "io_binding", or "fixed [sizes]"
        (+ " cuda_graph")."""
        self.batch_cap: int | None = None
        """On CUDA: the largest batch size GPU memory holds, when below the configured max_batch_size."""

    @classmethod
    def load(cls, path: Path, *, config: ModelConfig, providers: Sequence[str]) -> OnnxSession:
        """Create the session (slow: call it off the event loop) and warm it up if config.warmup.

        Raises whatever ONNX Runtime raises for a missing or corrupt file; the registry turns it
        into the model's not-ready reason.
        """
        requested = resolve_providers(providers)
        session = ort.InferenceSession(
            str(path), sess_options=session_options(config),
            providers=binding.provider_list(requested, cuda_graph=config.cuda_graph))
        loaded = cls(session, path=path)
        mark_unusable(requested, loaded.providers)
        fallback = describe_fallback(providers, loaded.providers)
        if fallback:
            logger.warning("%s: %s", path, fallback)
        loaded.use_binding(config)
        if config.warmup:
            loaded.warm_up_logged(config)
        return loaded

    def warm_up_logged(self, config: ModelConfig) -> bool:
        """Warm up at batch 1 and every preferred batch size; a failure is a warning, not a load failure.

        Some graphs refuse zeros (a sample rate of 0, an empty sequence): the model is still served, its
        first request just pays for ONNX Runtime's lazy initialisation. Returns whether warm-up ran.
        """
        values = config.warmup.inputs if isinstance(config.warmup, Warmup) else {}
        shapes = {spec.name: spec.shape for spec in config.inputs}
        batched = config.max_batch_size != 0 and all(spec.shape[:1] == [-1] for spec in self.inputs)
        sizes = dict.fromkeys([1, *config.preferred_batch_sizes]) if batched else {1: None}
        for size in sizes:
            try:
                self.warm_up(shapes, values=values, batch_size=size if batched else None)
            except Exception as exc:  # ONNX Runtime's own error types; the graph decides what it accepts
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                logger.warning(
                    "%s: warm-up at batch %d failed, serving the model anyway (give inputs the graph "
                    "accepts with `warmup: {inputs: {name: value}}` in config.yaml): %s",
                    self.path, size, first_line[:300],
                )
                return False
        return True

    def warm_up(self, shapes: Mapping[str, Sequence[int]] | None = None, *,
                values: Mapping[str, float | list[Any]] | None = None, batch_size: int | None = None) -> None:
        """Run once so the first request does not pay for lazy initialisation; raises what ONNX Runtime
        raises.

        `shapes` (config input shapes by name) may pin dims the graph leaves dynamic; `values` gives an input
        a number (every element) or its exact nested lists instead of zeros; `batch_size` sets axis 0.
        """
        feed: TensorMap = {}
        for spec in self.inputs:
            shape = (shapes or {}).get(spec.name)
            if shape is not None and len(shape) == len(spec.shape):
                spec = spec.model_copy(update={"shape": list(shape)})
            if batch_size is not None and spec.shape:
                spec = spec.model_copy(update={"shape": [batch_size, *spec.shape[1:]]})
            feed[spec.name] = warmup_tensor(spec, (values or {}).get(spec.name), batch_size=batch_size)
        self.run(feed)

    def use_binding(self, config: ModelConfig) -> None:
        """Route `run` through IO binding or fixed-shape buckets as `config` asks (see runtime/binding.py);
        on CUDA, cap the batch size at what GPU memory holds. A model whose shapes cannot be fixed is
        served through plain IO binding, with a warning."""
        device = binding.device_of(self.providers)
        batched = all(spec.shape[:1] == [-1] for spec in self.inputs)
        # the default derive_config (repository/scan.py) gives
        limit = config.max_batch_size if config.max_batch_size is not None else (32 if batched else 0)
        if device == "cuda" and batched and limit > 1:
            cap = binding.batch_cap(self._run_zeros, max_batch=limit, free_bytes=binding.cuda_free_bytes)
            if cap < limit:
                logger.warning("%s: GPU memory holds batches of %d items, not %d; max_batch_size capped",
                               self.path, cap, limit)
                self.batch_cap = limit = cap
        if config.cuda_graph:
            sizes = [p for p in config.preferred_batch_sizes if p <= max(limit, 1)] or [max(limit, 1)]
            try:
                buckets = binding.FixedBuckets(
                    self._session, inputs=self.inputs, outputs=self.outputs, sizes=sizes, device=device,
                    cuda_graph=device == "cuda", fallback=self._plain_run)
            except ValueError as exc:
                logger.warning("%s: cuda_graph is off: %s", self.path, exc)
            else:
                self._bound = buckets.run
                self.binding = f"fixed {buckets.sizes}" + (" cuda_graph" if buckets.cuda_graph else "")
                return
        if (config.io_binding == "on" or (config.io_binding == "auto" and device == "cuda")
                or config.cuda_graph):
            staging = binding.Staging(binding.pinned_memory_info() if device == "cuda" else None)
            self._bound = binding.BoundRunner(self._session, output_names=self._output_names, device=device,
                                              staging=staging).run
            self.binding = "io_binding" + (" pinned" if staging.pinned else "")

    def _run_zeros(self, batch: int) -> None:
        self._plain_run({
            spec.name: zeros_like_spec(spec.model_copy(update={"shape": [batch, *spec.shape[1:]]}))
            for spec in self.inputs
        })

    def run(self, inputs: TensorMap) -> TensorMap:
        """Every output, by name; synchronous (called in a worker thread)."""
        feed = {name: _ort_input(array) for name, array in inputs.items()}
        if self._bound is not None:
            return self._bound(feed)
        return self._plain_run(feed)

    def _plain_run(self, feed: TensorMap) -> TensorMap:
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, results, strict=True))
