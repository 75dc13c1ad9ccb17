"""`CodecPool`: big v2 bodies are decoded, and big JSON responses encoded, in worker processes.

Parsing a 32 MB JSON body (orjson, then pydantic, then numpy) takes seconds of CPU, and orjson and zlib
hold the GIL for hundreds of milliseconds at a time, so a thread would not free the event loop: a
process does. Small bodies stay inline, where the round trip to a process (pickling the body and the
arrays) would cost more than the work; `min_bytes` is that threshold (measured: see
`docs/architecture.md`). Binary tensors after a small JSON header stay inline at any size: they are
`np.frombuffer` views of the body, and only JSON text and compressed bodies cost enough to move. A
compressed body is inflated inline only while it stays under `min_bytes`.

A body is read into memory until it reaches `min_bytes`, then spooled to a temporary file as it arrives
(`receive`), and the worker reads the file: pickling a 32 MB body to the worker held the GIL for a long
copy. Bounded: `workers` processes at a lower CPU priority (nice +10), started at the first big body (a
server that never sees one never starts them), and at most two jobs per worker handed over at a time;
the rest wait on the event loop, holding only their (spooled) body. A worker that dies (killed, out of
memory) fails its requests with a 500 and the pool is made again for the next one. Workers are spawned
(not forked: the server runs ONNX Runtime and event-loop threads), which imports the main module again
in each: `python -m service` and the uvicorn factory are fine; a script that starts the server itself
needs `if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from service.errors import InferenceFailed, PayloadTooLarge, RequestTimeout
from service.metrics import CODEC_OFFLOADED
from service.protocol import codec
from service.protocol.codec import DecodedRequest, DecodeLimits, EncodedResponse
from service.types import TensorMap

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

WORKER_NICENESS = 10
"""Added to the worker processes' nice value (lower CPU priority than the server's own threads)."""
JSON_BYTES_PER_ELEMENT = 10
"""About how many bytes of JSON text one numeric output element becomes (orjson, float32)."""


class CodecPool:
    """Decode and encode through `codec`, inline for small bodies, in worker processes for big ones."""

    def __init__(self, *, workers: int, min_bytes: int, limits: DecodeLimits) -> None:
        self.workers = workers
        """0 keeps everything inline (on the event loop)."""
        self.min_bytes = min_bytes
        self.limits = limits
        self._executor: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._folder: Path | None = None
        self._spooling = True

    async def receive(self, receive: Receive, *, content_encoding: str | None = None,
                      header_length: str | None = None) -> Body:
        """Read a request body from ASGI `receive`: in memory while under `min_bytes`, then spooled to a file
        chunk by chunk, so a big body is never joined (one long copy holding the GIL) nor pickled to a
        worker. A body that decodes inline at any size (`offloads` is false: binary tensors after a small
        JSON header) stays in memory. A client that disconnects first raises ClientDisconnect (as
        Starlette's `stream` does)."""
        spooling = self._spooling and self.offloads(content_encoding, header_length)
        parts: list[bytes] = []
        size = 0
        spool: SpooledBody | None = None
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunk: bytes = message.get("body", b"")
                if spool is not None:
                    spool.write(chunk)
                elif chunk:
                    parts.append(chunk)
                    size += len(chunk)
                    if self.workers and size >= self.min_bytes and spooling:
                        spool = self._spool(parts)
                        if spool is not None:
                            parts = []
                if not message.get("more_body", False):
                    break
        except BaseException:
            if spool is not None:
                spool.discard()
            raise
        if spool is not None:
            spool.finish()
            return spool
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def decode(self, body: Body, *, content_encoding: str | None, header_length: str | None,
                     limit_s: float | None = None) -> DecodedRequest:
        """`codec.decode_body` of the body as sent; raises what it raises (InvalidInput, 413, 415), and
        RequestTimeout when a worker has not answered within `limit_s` (inline decoding is not timed)."""
        if isinstance(body, SpooledBody):
            try:
                CODEC_OFFLOADED.labels("decode").inc()
                return await self._submit(limit_s, _decode_file, body.path, content_encoding,
                                          header_length, self.limits)
            finally:
                body.discard()
        if self.workers == 0 or not self.offloads(content_encoding, header_length):
            return codec.decode_body(body, content_encoding=content_encoding, header_length=header_length,
                                     limits=self.limits)
        if len(body) < self.min_bytes:
            small = self._inflate_small(body, content_encoding)
            if small is not None:
                return codec.decode_request(small, header_length=header_length,
                                            max_elements=self.limits.max_tensor_elements)
        CODEC_OFFLOADED.labels("decode").inc()
        return await self._submit(limit_s, _decode_job, body, content_encoding, header_length, self.limits)

    async def encode(self, outputs: TensorMap, plan: dict[str, bool], *, model_name: str, model_version: str,
                     request_id: str | None, limit_s: float | None = None) -> EncodedResponse:
        """`codec.encode_response`; in a worker when the JSON part of the answer is big (RequestTimeout when
        the worker has not answered within `limit_s`)."""
        json_elements = sum(outputs[name].size for name, as_binary in plan.items()
                            if not as_binary and name in outputs)
        if self.workers == 0 or json_elements * JSON_BYTES_PER_ELEMENT < self.min_bytes:
            return codec.encode_response(outputs, plan, model_name=model_name, model_version=model_version,
                                         request_id=request_id)
        CODEC_OFFLOADED.labels("encode").inc()
        return await self._submit(limit_s, _encode_job, outputs, plan, model_name, model_version, request_id)

    def offloads(self, content_encoding: str | None, header_length: str | None) -> bool:
        """Whether a big body with these headers is worth a worker. Only parsing JSON text and inflating
        cost enough: an uncompressed binary body whose JSON header is under `min_bytes` decodes inline at
        any size (the tensors are `np.frombuffer` views of the body, no copy). Spooling and pickling a
        602 KB ResNet input instead cost more CPU than the model's whole decode."""
        if (content_encoding or "").strip().lower() not in ("", "identity"):
            return True
        return header_length is None or not header_length.isdigit() or int(header_length) >= self.min_bytes

    @staticmethod
    def release(body: Body) -> None:
        """Remove a spooled body's file (done by `decode` already; for bodies that never got there)."""
        if isinstance(body, SpooledBody):
            body.discard()

    def close(self) -> None:
        """Stop the worker processes now: running jobs are abandoned (their requests were answered or
        cancelled by then). Terminated, not waited for: a niced worker on a saturated machine can take
        minutes to finish a job, and shutdown must not wait on it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            # ProcessPoolExecutor has no public way to stop busy workers before Python 3.14
            # (terminate_workers); its `_processes` maps pid -> multiprocessing.Process.
            processes = list(getattr(executor, "_processes", {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=5)
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _spool(self, parts: list[bytes]) -> SpooledBody | None:
        """A spool file holding `parts`; None (and no more tries) where no temporary file can be made: big
        bodies are then kept in memory and pickled to the workers, slower but served."""
        try:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="deepserve-bodies-"))
            spool = SpooledBody.create(self._folder)
        except OSError as exc:
            logger.warning("big request bodies stay in memory: no temporary file could be made (%s)", exc)
            self._spooling = False
            return None
        for part in parts:
            spool.write(part)
        return spool

    # ---- internals ------------------------------------------------------------------------------

    def _inflate_small(self, body: bytes, content_encoding: str | None) -> bytes | None:
        """The body inflated inline if it inflates to under `min_bytes`, else None (the pool inflates it)."""
        encoding = (content_encoding or "").strip().lower()
        if encoding in ("", "identity"):
            return body
        limit = min(self.min_bytes, self.limits.max_inflated_bytes)
        try:
            return codec.inflate(body, content_encoding, limit=limit)
        except PayloadTooLarge:
            if limit == self.limits.max_inflated_bytes:
                raise
            return None

    async def _submit(self, limit_s: float | None, job: Callable[..., _T], *args: object) -> _T:
        """`job(*args)` in a worker. Waiting for a slot counts against `limit_s`: the workers run at a lower
        CPU priority, so a saturated machine can starve them, and a request must not wait for ever."""
        try:
            async with asyncio.timeout(limit_s):
                return await self._run(job, *args)
        except TimeoutError:
            raise RequestTimeout(
                f"the codec workers did not handle the request within {limit_s:g} s: they are busy; retry "
                "later, or send binary tensors, which need almost no decoding"
            ) from None

    async def _run(self, job: Callable[..., _T], *args: object) -> _T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(2 * self.workers)
        async with self._slots:
            executor = self._executor_now()
            try:
                return await asyncio.get_running_loop().run_in_executor(executor, job, *args)
            except BrokenProcessPool:
                logger.error("a codec worker process died (killed or out of memory); starting a new pool")
                if self._executor is executor:
                    self._executor = None
                    executor.shutdown(wait=False, cancel_futures=True)
                raise InferenceFailed("a codec worker process died while handling the request") from None

    def _executor_now(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the server process runs ONNX Runtime and event-loop threads
            self._executor = ProcessPoolExecutor(max_workers=self.workers, initializer=_lower_priority,
                                                 mp_context=multiprocessing.get_context("spawn"))
        return self._executor


@dataclass(slots=True)
class SpooledBody:
    """A request body in a temporary file (its bytes go to a worker by path, not through a pipe)."""

    path: str
    fd: int
    size: int = 0

    @classmethod
    def create(cls, folder: Path) -> SpooledBody:
        fd, path = tempfile.mkstemp(dir=folder, suffix=".body")
        return cls(path=path, fd=fd)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:  # a chunk is at most ~64 KiB (the server's read size): page-cache writes, no waiting
            view = view[os.write(self.fd, view):]
        self.size += len(chunk)

    def finish(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.finish()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


Body = bytes | SpooledBody
"""A request body as `CodecPool.receive` read it."""


def _lower_priority() -> None:
    """Runs first in each worker: big bodies are bulk work, so the workers take the CPU the server's own
    threads (event loop, ONNX Runtime) leave idle instead of competing with them as equals."""
    os.nice(WORKER_NICENESS)


def _decode_job(body: bytes, content_encoding: str | None, header_length: str | None,
                limits: DecodeLimits) -> DecodedRequest:
    """Runs in a worker: decode, then drop the JSON `data` lists (the arrays carry them; pickling them
    back would cost as much as the parse)."""
    decoded = codec.decode_body(body, content_encoding=content_encoding, header_length=header_length,
                                limits=limits)
    request = decoded.request
    slim = [item.model_copy(update={"data": None}) for item in request.inputs]
    return DecodedRequest(request=request.model_copy(update={"inputs": slim}), inputs=decoded.inputs)


def _decode_file(path: str, content_encoding: str | None, header_length: str | None,
                 limits: DecodeLimits) -> DecodedRequest:
    with open(path, "rb") as file:
        body = file.read()
    return _decode_job(body, content_encoding, header_length, limits)


def _encode_job(outputs: TensorMap, plan: dict[str, bool], model_name: str, model_version: str,
                request_id: str | None) -> EncodedResponse:
    return codec.encode_response(outputs, plan, model_name=model_name, model_version=model_version,
                                 request_id=request_id)
