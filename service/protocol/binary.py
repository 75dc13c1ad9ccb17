"""Raw tensor bytes of the binary tensor data extension <-> numpy, and the body's JSON/binary split.

Layout (https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md):
the body is a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's raw
bytes in the order of the header's inputs (or outputs), little-endian, row-major, no padding. BOOL is
one byte (0 or 1); a BYTES element is a 4-byte little-endian unsigned length, then that many bytes.
Numeric tensors are views over the body (`np.frombuffer`), never copied element by element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from service.errors import InvalidInput
from service.types import Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """(JSON header, binary part) of a request body; without the header field the body is all JSON."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"{HEADER_LENGTH} is {header_length!r}, not an integer; set it to the byte length of the JSON "
            "header at the start of the body"
        ) from None
    if not 0 < length <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes; it must be the byte length of "
            "the JSON header at the start of the body (more than 0, at most the body size)"
        )
    return view[:length], view[length:]


def _where(name: str, shape: Sequence[int]) -> str:
    return f"input {name!r} (shape {list(shape)})"


def decode_raw(name: str, chunk: memoryview, *, dtype: np.dtype[np.generic], shape: Sequence[int]) -> Tensor:
    """One input's raw bytes -> array of `shape`; sizes, BOOL bytes and BYTES prefixes are checked."""
    count = math.prod(shape)
    if dtype.kind == "O":
        return decode_bytes_elements(name, chunk, shape=shape)
    needed = count * dtype.itemsize
    if len(chunk) != needed:
        raise InvalidInput(
            f"{_where(name, shape)}: binary_data_size is {len(chunk)} bytes but {count} elements of "
            f"{dtype.itemsize} byte(s) need {needed}; send shape and raw bytes that agree"
        )
    if dtype.kind == "b":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        bad = np.flatnonzero(raw > 1)
        if bad.size:
            raise InvalidInput(
                f"input {name!r}: BOOL bytes must be 0 or 1, element {int(bad[0])} is {int(raw[bad[0]])}"
            )
        return raw.view(np.bool_).reshape(shape)
    # little-endian on the wire; astype is a no-op on little-endian hosts
    array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    return array.reshape(shape)


def decode_bytes_elements(name: str, chunk: memoryview, *, shape: Sequence[int]) -> Tensor:
    """Length-prefixed BYTES elements -> object array of `bytes` of `shape`."""
    count = math.prod(shape)
    items: list[bytes] = []
    pos, end = 0, len(chunk)
    while pos < end:
        if len(items) == count:
            raise InvalidInput(
                f"{_where(name, shape)}: {end - pos} bytes are left after the {count} BYTES elements the "
                "shape needs; each element is a 4-byte little-endian length followed by that many bytes"
            )
        if pos + 4 > end:
            raise InvalidInput(
                f"{_where(name, shape)}: BYTES element {len(items)} is truncated: its 4-byte length prefix "
                f"starts at byte {pos} of {end}; check binary_data_size"
            )
        (length,) = _LENGTH.unpack_from(chunk, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(
                f"{_where(name, shape)}: BYTES element {len(items)} says {length} bytes but only {end - pos} "
                "remain in its binary_data_size; check the length prefixes and binary_data_size"
            )
        items.append(bytes(chunk[pos:pos + length]))
        pos += length
    if len(items) != count:
        raise InvalidInput(
            f"{_where(name, shape)}: binary data holds {len(items)} BYTES elements but the shape needs "
            f"{count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode_raw(array: Tensor) -> bytes:
    """Array -> raw bytes of the extension: little-endian, row-major; BYTES length-prefixed."""
    if array.dtype.kind in "OUS":
        return encode_bytes_elements(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return little.tobytes(order="C")


def encode_bytes_elements(array: Tensor) -> bytes:
    """Object/str/bytes array -> concatenated (4-byte length, bytes) elements; str is UTF-8 encoded."""
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
