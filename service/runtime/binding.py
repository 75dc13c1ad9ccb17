"""Running a session through ONNX Runtime's IO binding: device outputs, pinned staging, fixed-shape buckets.

`session.run(names, feed)` hands numpy inputs to ONNX Runtime and gets numpy outputs back; with the
CUDA provider every output is first written to device memory, then copied to a host tensor ONNX
Runtime owns, then wrapped for Python. `BoundRunner` binds the inputs and outputs instead:

- `run`: inputs bound from host memory (copied to the device once), outputs bound to the session's
  device and copied to host once (`copy_outputs_to_cpu`). On the CPU provider the same calls run with
  the device "cpu" (no copies at all), which is how the path is tested without a GPU.
- Pinned staging: where the CUDA provider exposes host-accessible (page-locked) memory through
  `onnxruntime.get_ep_devices()`, inputs are first written into a reused pinned buffer, so the
  host-to-device copy is a DMA transfer instead of a staged pageable copy. Elsewhere the staging
  buffer is plain host memory and is skipped: inputs are bound where they lie.
- Fixed-shape buckets (`FixedBuckets`): inputs and outputs preallocated on the device for a few batch
  sizes whose other dims are static; a batch of n items is padded up to the smallest bucket >= n, the
  device buffers are updated in place and the outputs' first n rows are copied out. Fixed buffers are
  what CUDA graphs need: with `cuda_graph` the CUDA provider captures one graph per bucket (run option
  `gpu_graph_id`) on its first run and replays it after. On the CPU provider the same buckets run
  without a graph.

Everything here is synchronous and runs in the batcher's worker thread, one batch per runner at a
time, so a runner's buffers are never used by two batches at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.repository.config import TensorSpec
from service.types import NUMPY_DTYPES, Tensor, TensorMap

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"


def device_of(providers: Sequence[str]) -> str:
    """The ORT device name outputs are bound to: "cuda" when the session runs on CUDA, else "cpu"."""
    return "cuda" if providers and providers[0] == CUDA else "cpu"


def pinned_memory_info() -> Any | None:
    """The CUDA provider's host-accessible (pinned) memory info, or None where ORT offers none (CPU)."""
    get_devices = getattr(ort, "get_ep_devices", None)
    kind = getattr(ort, "OrtDeviceMemoryType", None)
    if get_devices is None or kind is None:
        return None
    for ep_device in get_devices():
        if ep_device.ep_name == CUDA:
            return ep_device.memory_info(kind.HOST_ACCESSIBLE)
    return None


class Staging:
    """Reused host buffers per input name, grown to the largest batch seen; pinned where ORT allows."""

    def __init__(self, memory_info: Any | None) -> None:
        self.memory_info = memory_info
        self._buffers: dict[str, tuple[Any, Tensor]] = {}  # name -> (OrtValue keeping it alive, flat view)

    @property
    def pinned(self) -> bool:
        return self.memory_info is not None

    def stage(self, name: str, array: Tensor) -> Tensor:
        """`array` copied into this name's pinned buffer (a view of its shape); as is when not pinned."""
        if self.memory_info is None or array.dtype == object:
            return array
        held = self._buffers.get(name)
        if held is None or held[1].dtype != array.dtype or held[1].size < array.size:
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                [max(array.size, 1)], array.dtype, memory_info=self.memory_info)
            held = (value, value.numpy())
            self._buffers[name] = held
        view = held[1][: array.size].reshape(array.shape)
        np.copyto(view, array)
        return view


class BoundRunner:
    """`run(feed)` through IO binding on `session`'s device; see the module docstring."""

    def __init__(self, session: ort.InferenceSession, *, output_names: Sequence[str], device: str,
                 staging: Staging | None = None) -> None:
        self._session = session
        self._outputs = list(output_names)
        self.device = device
        self.staging = staging or Staging(None)
        self._local = threading.local()  # an IOBinding per thread (instances never share one)

    def run(self, feed: TensorMap) -> TensorMap:
        binding = getattr(self._local, "binding", None)
        if binding is None:
            binding = self._local.binding = self._session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, self.staging.stage(name, np.ascontiguousarray(array)))
        for name in self._outputs:
            binding.bind_output(name, self.device)
        self._session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return dict(zip(self._outputs, results, strict=True))


@dataclass
class _Bucket:
    size: int
    binding: Any
    inputs: dict[str, Any]   # name -> OrtValue (device)
    outputs: dict[str, Any]  # name -> OrtValue (device)
    run_options: ort.RunOptions
    host: dict[str, Tensor]  # name -> padded host batch of `size` items, reused


def fixed_shape(spec: TensorSpec, batch: int) -> list[int] | None:
    """`spec`'s shape with the batch axis set to `batch`, or None when another dim is dynamic."""
    if not spec.shape or any(dim < 0 for dim in spec.shape[1:]):
        return None
    return [batch, *spec.shape[1:]]


class FixedBuckets:
    """Preallocated device inputs/outputs for each bucket size; a batch is padded to the next bucket.

    A batch larger than every bucket (batching off, or a client's own large batch) runs through
    `fallback`, the session's plain run.

    Raises ValueError at construction when a tensor has dynamic non-batch dims, a string type, or
    the buckets are empty: fixed buffers need every shape known in advance.
    """

    def __init__(self, session: ort.InferenceSession, *, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], sizes: Sequence[int], device: str, cuda_graph: bool,
                 fallback: Callable[[TensorMap], TensorMap]) -> None:
        if not sizes:
            raise ValueError("fixed-shape buckets need at least one batch size")
        for spec in [*inputs, *outputs]:
            if spec.datatype == "BYTES" or fixed_shape(spec, 1) is None:
                raise ValueError(
                    f"tensor {spec.name!r} has shape {spec.shape} and type {spec.datatype}: fixed-shape "
                    "buffers (and CUDA graphs) need numeric tensors whose dims after the batch axis are all "
                    "static"
                )
        self.sizes = sorted(set(sizes))
        self.device = device
        self.cuda_graph = cuda_graph
        self._session = session
        self._input_specs = list(inputs)
        self._output_specs = list(outputs)
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()
        self._fallback = fallback

    def bucket_for(self, items: int) -> int | None:
        """The smallest bucket holding `items`, or None when the batch is larger than every bucket."""
        return next((size for size in self.sizes if size >= items), None)

    def _bucket(self, size: int) -> _Bucket:
        with self._lock:
            bucket = self._buckets.get(size)
            if bucket is None:
                bucket = self._buckets[size] = self._make(size)
            return bucket

    def _make(self, size: int) -> _Bucket:
        binding = self._session.io_binding()
        made: dict[str, dict[str, Any]] = {"in": {}, "out": {}}
        for kind, specs in (("in", self._input_specs), ("out", self._output_specs)):
            for spec in specs:
                shape = fixed_shape(spec, size)
                assert shape is not None  # checked in __init__
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, NUMPY_DTYPES[spec.datatype], self.device, 0)
                made[kind][spec.name] = value
                if kind == "in":
                    binding.bind_ortvalue_input(spec.name, value)
                else:
                    binding.bind_ortvalue_output(spec.name, value)
        options = ort.RunOptions()
        # one captured graph per bucket; -1 (no capture) when graphs are off
        graph_id = self.sizes.index(size) + 1 if self.cuda_graph else -1
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        host = {spec.name: np.zeros(fixed_shape(spec, size) or [], dtype=NUMPY_DTYPES[spec.datatype])
                for spec in self._input_specs}
        return _Bucket(size, binding, made["in"], made["out"], options, host)

    def run(self, feed: TensorMap) -> TensorMap:
        """Pad `feed` (n items) to its bucket, run on the fixed buffers, return the first n rows (copied)."""
        items = len(next(iter(feed.values())))
        size = self.bucket_for(items)
        if size is None:
            return self._fallback(feed)
        bucket = self._bucket(size)
        for name, array in feed.items():
            host = bucket.host[name]
            host[:items] = array
            host[items:] = 0  # padding rows: zeros, whatever the last batch left there
            bucket.inputs[name].update_inplace(host)
        self._session.run_with_iobinding(bucket.binding, bucket.run_options)
        if self.device == "cpu":  # the buffers are host memory: copy the rows out before the next batch
            return {name: value.numpy()[:items].copy() for name, value in bucket.outputs.items()}
        copies = bucket.binding.copy_outputs_to_cpu()
        return {spec.name: copy[:items] for spec, copy in zip(self._output_specs, copies, strict=True)}


def provider_list(requested: Sequence[str], *, cuda_graph: bool) -> list[str | tuple[str, dict[str, str]]]:
    """`requested` as handed to InferenceSession: the CUDA provider gets `enable_cuda_graph` when asked."""
    return [(name, {"enable_cuda_graph": "1"}) if name == CUDA and cuda_graph else name for name in requested]


# ---- batch size capped by GPU memory -------------------------------------------------------------------


def cuda_free_bytes() -> int | None:
    """Free device memory from the CUDA runtime (cudaMemGetInfo), or None without a usable CUDA runtime."""
    import ctypes
    import ctypes.util

    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", ctypes.util.find_library("cudart")):
        if not name:
            continue
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
        return None
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """ONNX Runtime's allocation failures (its CUDA and CPU allocators word them differently)."""
    text = str(exc).lower()
    markers = ("out of memory", "failed to allocate", "bad_alloc", "cudaerrormemory")
    return any(marker in text for marker in markers)


def batch_cap(run_at: Any, *, max_batch: int, free_bytes: Any, headroom: float = 0.1) -> int:
    """The largest batch size up to `max_batch` that runs and leaves `headroom` of free memory.

    `run_at(n)` runs one batch of n items (raising ONNX Runtime's out-of-memory error when it does not
    fit); `free_bytes()` reads free device memory (None: no device to cap for, `max_batch` is kept).
    Halves from `max_batch` until a size runs; between that size and the one that failed it keeps the
    largest size the memory used per item (measured from batch 1 to the size that ran) still fits in.
    """
    before = free_bytes()
    if before is None or max_batch <= 1:
        return max_batch
    run_at(1)
    after_one = free_bytes()
    size, failed = max_batch, None
    while True:
        try:
            run_at(size)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or size == 1:
                raise
            failed, size = size, max(1, size // 2)
    if failed is None:
        return size
    after = free_bytes()
    if after is None or after_one is None or size == 1:
        return size
    per_item = max((after_one - after) / (size - 1), 1.0)
    spare = max(after - headroom * before, 0.0)
    return min(failed - 1, size + int(spare / per_item))
