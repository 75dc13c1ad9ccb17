"""What browsers and phones record: WebM/Opus, Ogg/Opus, MP4/AAC (M4A) and MP3, decoded with PyAV.

libsndfile (see `service.tasks.audio`) reads WAV, FLAC, Ogg and MP3 but no WebM or MP4, which is what
Chrome, Firefox and Safari's MediaRecorder and iPhones produce. PyAV ships FFmpeg's demuxers and
decoders in its wheel. Containers are recognised by their magic bytes and opened with that demuxer
only, so arbitrary bytes are never probed as some other format.

A container that stops early is refused rather than decoded in part: an MP4 without its index fails to
open, a WebM/MP3 whose header states a longer duration than could be decoded is truncated, and an Ogg
stream must end on a complete page carrying the end-of-stream flag.
"""

from __future__ import annotations

import io
import re
import zlib

import av
import numpy as np

from service.errors import InvalidInput
from service.types import FloatArray

DEMUXERS = {"WebM": "matroska", "MP4": "mp4", "Ogg": "ogg", "MP3": "mp3"}
"""Container name (as in messages) -> the FFmpeg demuxer forced for it."""
MAX_SHORTFALL_S = 0.05
"""Decoded audio may fall short of the container's stated duration by this much (codec priming and
padding); more means the file was cut or damaged."""
MAX_TRAILING_BYTES = 32
"""Bytes a WebM without a stated duration may hold after its last audio block (a closing element);
more is a block cut short. A cut within a block's first bytes is indistinguishable from a shorter
recording and is decoded as one."""
_OGG_EOS = 0x04


def sniff(data: bytes) -> str | None:
    """The container of `data` from its first bytes: 'WebM', 'MP4', 'Ogg', 'MP3', or None."""
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM"  # EBML: WebM and Matroska
    if data[4:8] == b"ftyp":
        return "MP4"  # ISO base media: MP4, M4A, 3GP, MOV
    if data.startswith(b"OggS"):
        return "Ogg"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE6 == 0xE2):
        return "MP3"  # ID3 tag, or an MPEG-1/2 layer III frame sync
    return None


def check_ogg_complete(data: bytes, *, where: str) -> None:
    """Walk the Ogg pages: they must tile the file exactly and the last must carry end-of-stream.

    FFmpeg and libsndfile both decode a cut Ogg file up to its last whole page without complaint.
    """
    offset, flags = 0, 0
    while offset < len(data):
        if data[offset:offset + 4] != b"OggS" or offset + 27 > len(data):
            raise InvalidInput(
                f"{where} is a damaged Ogg file (no page at byte {offset}); send the whole file"
            )
        flags, segments = data[offset + 5], data[offset + 26]
        table = data[offset + 27:offset + 27 + segments]
        end = offset + 27 + segments + sum(table)
        if len(table) < segments or end > len(data):
            raise InvalidInput(
                f"{where} is a truncated Ogg file (its last page "
                f"is cut at byte {len(data)}); send the whole file"
            )
        page = data[offset:end]
        if _ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != int.from_bytes(page[22:26], "little"):
            raise InvalidInput(f"{where} is a damaged Ogg file (bad checksum in the page at byte {offset})")
        offset = end
    if not flags & _OGG_EOS:
        raise InvalidInput(
            f"{where} is a truncated Ogg file (the stream has no end page); send the whole file"
        )


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, MSB first, init 0, no final xor) at C speed through zlib.

    zlib computes the bit-reflected CRC; over bit-reversed bytes, bit-reversed back, it is the same CRC
    MSB first. `crc32(x, 0xFFFFFFFF) ^ 0xFFFFFFFF` undoes zlib's initial and final inversion.
    """
    reflected = zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def decode(data: bytes, *, container: str, where: str, max_frames_at: float) -> tuple[FloatArray, int]:
    """Decode the first audio stream to float32 (frames, channels) and its rate.

    Reading stops once more than `max_frames_at` seconds were decoded (the caller refuses those). Raises
    InvalidInput for unreadable, damaged or truncated files and files without audio.
    """
    try:
        with av.open(io.BytesIO(data), mode="r", format=DEMUXERS[container]) as box:
            if not box.streams.audio:
                raise InvalidInput(f"{where} is a {container} file without an audio track; send a recording")
            stream = box.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 0)
            stated_s = float(box.duration) / av.time_base if box.duration else None
            chunks, end = _decode_frames(box, stream, limit=int(max_frames_at * rate) + 1 if rate else 0)
    except InvalidInput:
        raise
    except Exception as exc:  # untrusted bytes: any demuxer or decoder failure means a damaged file
        raise InvalidInput(f"{where} is a damaged or truncated {container} file ({_reason(exc)})") from exc
    if not rate or not channels:
        raise InvalidInput(f"{where} is a {container} file whose audio has no sample rate or channels")
    empty = np.zeros((0, channels), np.float32)
    frames = np.concatenate(chunks, axis=1).T if chunks else empty  # (C, N) -> (N, C)
    decoded_s = frames.shape[0] / rate
    if stated_s is not None and decoded_s < stated_s - MAX_SHORTFALL_S and decoded_s < max_frames_at:
        raise InvalidInput(
            f"{where} is a truncated or damaged {container} file: its header says {stated_s:.2f} s but only "
            f"{decoded_s:.2f} s could be decoded; send the whole file"
        )
    left = len(data) - end
    if (
        stated_s is None
        and container == "WebM"
        and end > 0
        and left > MAX_TRAILING_BYTES
        and decoded_s < max_frames_at
    ):
        # a streamed WebM (MediaRecorder's) states no duration: a cut leaves a partial block
        raise InvalidInput(
            f"{where} is a truncated WebM file: its last {left} "
            "bytes are an incomplete block; send the whole file"
        )
    return np.ascontiguousarray(frames, dtype=np.float32), rate


def _decode_frames(
    box: av.container.InputContainer, stream: av.AudioStream, *, limit: int
) -> tuple[list[FloatArray], int]:
    """Planar float32 chunks (channels, n) until the end or past `limit` frames, and the byte offset where
    the last packet read ends (0 when the demuxer does not say)."""
    resampler = av.AudioResampler(
        format="fltp", layout=stream.codec_context.layout, rate=stream.codec_context.rate
    )
    chunks: list[FloatArray] = []
    total = end = 0
    for packet in box.demux(stream):
        if packet.size and packet.pos is not None and packet.pos >= 0:
            end = packet.pos + packet.size
        for frame in packet.decode():
            for plain in resampler.resample(frame):
                chunk = plain.to_ndarray().astype(np.float32, copy=False)  # (C, n)
                chunks.append(chunk)
                total += chunk.shape[1]
            if total >= limit:
                return chunks, end
    return chunks, end


def _reason(exc: Exception) -> str:
    text = re.sub(r"^\[Errno -?\d+\] |: '<none>'$", "", str(exc).strip())  # FFmpeg's errno prefix
    return (text or type(exc).__name__)[:200]
