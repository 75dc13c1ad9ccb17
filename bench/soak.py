"""Soak and chaos: mixed traffic at a fixed concurrency against a real server, every answer checked.

    python bench/soak.py --repository /tmp/demo_quick --duration 1800 --concurrency 32 --port 38100

What it does, for `--duration` seconds:
- starts `python -m service` on a copy of the repository (loopback only) and waits until it is ready;
- `--concurrency` clients send, at random: v2 JSON and v2 binary infer to the `--v2` models, /v1 image
  (PNG), text and audio (WAV) predictions to `--image`, `--text`, `--audio`; each request has its own
  x-request-id and v2 `id`, and each answer is checked against *its* request: v2 outputs against ONNX
  Runtime run here on the same model.onnx, /v1 answers against the server's own answer to the same input
  taken before the chaos starts (labels, scores to 1e-3, transcripts exactly);
- one request in ten comes from a corpus of bad inputs (truncated PNG/WAV, wrong datatype, wrong name,
  huge dimensions, invalid JSON, gzip bomb, truncated gzip, binary header past the body, non-UTF-8 text,
  slow-drip bodies sent over a raw socket, a stalled body): each must get a 4xx JSON error
  (slow-drip bodies are valid and must get the right answer);
- reloads `--reload` every 30 s and unloads then loads `--cycle` every 120 s, keeping it unloaded 5 s
  (requests for it meanwhile must get 404);
- samples the server's RSS (with its child processes), open file descriptors and established
  connections every 5 s.

Bars (exit status 1 when one fails, with --check): no 5xx, no request lost (no answer) or mismatched
(wrong answer, wrong id), RSS drift from `--settle` seconds (default 300) to the end at most 10%, open
file descriptors flat (at most 10 more at the end than at the settle point).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HEADER = "inference-header-content-length"
TEXTS = [
    "what a lovely day", "this is awful", "the service was quick and friendly", "I will never come back",
    "an average experience", "the food was cold but the staff were kind", "absolutely brilliant film",
    "terrible support, slow and rude", "it works", "not bad at all", "the worst purchase I have made",
    "great value for the money", "meh", "I loved every minute", "boring and far too long", "five stars",
]


@dataclass
class Outcome:
    kind: str
    status: int | None
    ok: bool
    note: str = ""


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    connections: int


@dataclass
class Report:
    duration_s: float
    concurrency: int
    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    mismatched: int = 0
    bad_refusals: int = 0
    notes: Counter[str] = field(default_factory=Counter)
    chaos: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    settle_s: float = 0.0
    max_slow_connections: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def sample_at(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.t - t))

    @property
    def rss_drift(self) -> float:
        start, end = self.sample_at(self.settle_s), self.samples[-1]
        return (end.rss_mb - start.rss_mb) / start.rss_mb

    @property
    def fd_growth(self) -> int:
        return self.samples[-1].fds - self.sample_at(self.settle_s).fds

    def failures(self) -> list[str]:
        problems = []
        if self.server_errors:
            problems.append(f"{sum(self.server_errors.values())} 5xx: {dict(self.server_errors)}")
        if self.lost:
            problems.append(f"{self.lost} requests lost (no answer)")
        if self.mismatched:
            problems.append(f"{self.mismatched} answers mismatched")
        if self.bad_refusals:
            problems.append(f"{self.bad_refusals} bad inputs not refused with a 4xx JSON error")
        if self.samples and self.rss_drift > 0.10:
            problems.append(f"RSS drift {self.rss_drift:+.1%} > 10%")
        if self.samples and self.fd_growth > 10:
            problems.append(f"open file descriptors grew by {self.fd_growth}")
        return problems

    def summary(self) -> dict[str, Any]:
        first, settle, last = self.samples[0], self.sample_at(self.settle_s), self.samples[-1]
        return {
            "duration_s": round(self.duration_s, 1),
            "concurrency": self.concurrency,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration_s, 1),
            "by_kind": dict(self.by_kind),
            "statuses": dict(self.statuses),
            "5xx": dict(self.server_errors),
            "lost": self.lost,
            "mismatched": self.mismatched,
            "bad_inputs_not_refused": self.bad_refusals,
            "notes": dict(self.notes),
            "chaos": dict(self.chaos),
            "latency_s": {
                kind: {
                    "p50": round(float(np.percentile(v, 50)), 3),
                    "p99": round(float(np.percentile(v, 99)), 3),
                    "max": round(max(v), 3),
                }
                for kind, v in sorted(self.latencies.items())
            },
            "rss_mb": {
                "start": first.rss_mb,
                f"at_{self.settle_s:.0f}s": settle.rss_mb,
                "end": last.rss_mb,
                "max": max(s.rss_mb for s in self.samples),
                "drift_from_settle": round(self.rss_drift, 4),
            },
            "fds": {
                "start": first.fds, f"at_{self.settle_s:.0f}s": settle.fds, "end": last.fds,
                "max": max(s.fds for s in self.samples),
            },
            "connections": {
                "max_established": max(s.connections for s in self.samples),
                "max_slow_clients_at_once": self.max_slow_connections,
            },
            "failures": self.failures(),
        }


# ---- the server ---------------------------------------------------------------------------------------


def proc_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants (the codec worker processes), in MB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(c) for c in children]
        except (OSError, StopIteration):
            continue
    return total / 1024


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                count += 1
    return count


def start_server(repository: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full_env = {
        **os.environ,
        "DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]',
        "DEEPSERVE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "service", "serve", "--model-repository", str(repository), "--host",
                "127.0.0.1", "--port", str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )


async def wait_ready(
    client: httpx.AsyncClient, process: subprocess.Popen[bytes], timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
        try:
            if (await client.get("/v2/health/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.25)
    raise RuntimeError("the server was not ready in time")


# ---- inputs and their expected answers ----------------------------------------------------------------


@dataclass
class V2Case:
    model: str
    input_name: str
    output_name: str
    x: np.ndarray
    expected: np.ndarray


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def digit_like(rng: np.random.Generator) -> np.ndarray:
    """A 28x28 light-on-dark stroke picture (random bars), values in [0, 1]."""
    img = np.zeros((28, 28), dtype=np.float32)
    for _ in range(rng.integers(1, 4)):
        r, c = rng.integers(4, 24, size=2)
        if rng.random() < 0.5:
            img[r:r + 2, max(0, c - 8):c + 8] = 1.0
        else:
            img[max(0, r - 8):r + 8, c:c + 2] = 1.0
    return img


def tone(rng: np.random.Generator) -> np.ndarray:
    seconds = rng.uniform(0.4, 1.2)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32)


async def v2_cases(client: httpx.AsyncClient, repository: Path, models: list[str], rng: np.random.Generator,
                   per_model: int) -> list[V2Case]:
    cases = []
    for name in models:
        meta = (await client.get(f"/v2/models/{name}")).json()
        spec, out = meta["inputs"][0], meta["outputs"][0]
        version = max(
            (p for p in (repository / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
        for _ in range(per_model):
            batch = int(rng.integers(1, 4))
            shape = [batch if i == 0 else (d if d > 0 else 8) for i, d in enumerate(spec["shape"])]
            x = rng.random(shape, dtype=np.float32)
            expected = session.run([out["name"]], {spec["name"]: x})[0]
            cases.append(V2Case(name, spec["name"], out["name"], x, expected))
    return cases


# ---- one request of each kind -------------------------------------------------------------------------


class Traffic:
    def __init__(
        self,
        client: httpx.AsyncClient,
        port: int,
        report: Report,
        *,
        cases: list[V2Case],
        images: list[tuple[bytes, Any]],
        texts: list[tuple[str, Any]],
        audios: list[tuple[bytes, Any]],
        image_model: str | None,
        text_model: str | None,
        audio_model: str | None,
        cycle: str | None,
        body_timeout_s: float,
        rng: random.Random,
    ) -> None:
        self.client, self.port, self.report = client, port, report
        self.cases, self.images, self.texts, self.audios = cases, images, texts, audios
        self.image_model, self.text_model, self.audio_model = image_model, text_model, audio_model
        self.cycle, self.body_timeout_s, self.rng = cycle, body_timeout_s, rng
        self.unloaded: set[str] = set()
        self.ids = itertools.count()
        self.slow_now = 0
        kinds: list[tuple[str, Callable[[], Awaitable[Outcome]]]] = [("v2_json", self.v2_json),
                                                                      ("v2_binary", self.v2_binary)]
        if image_model and images:
            kinds.append(("v1_image", self.v1_image))
        if text_model and texts:
            kinds.append(("v1_text", self.v1_text))
        if audio_model and audios:
            kinds.append(("v1_audio", self.v1_audio))
        self.kinds = kinds
        self.bad = [self.bad_truncated_png, self.bad_truncated_wav, self.bad_datatype, self.bad_name,
                    self.bad_huge_dims, self.bad_json, self.bad_gzip_bomb, self.bad_truncated_gzip,
                    self.bad_binary_header, self.bad_text_encoding, self.slow_drip, self.slow_drip,
                    self.stalled_body]
        self.bomb = gzip.compress(b"\0" * (80 * 1024 * 1024), compresslevel=9)

    def rid(self, kind: str) -> str:
        return f"soak-{kind}-{next(self.ids)}"

    async def one(self) -> Outcome:
        bad = self.rng.random() < 0.1  # one request in ten from the corpus of bad inputs
        send = self.rng.choice(self.bad) if bad else self.rng.choice(self.kinds)[1]
        started = time.monotonic()
        try:
            outcome = await send()
        except httpx.HTTPError as exc:
            outcome = Outcome(send.__name__, None, False, f"lost: {type(exc).__name__}")
        self.report.latencies.setdefault(outcome.kind, []).append(time.monotonic() - started)
        return outcome

    # -- good requests --

    def _check_status(self, kind: str, response: httpx.Response, rid: str, model: str) -> Outcome | None:
        if response.headers.get("x-request-id") != rid:
            return Outcome(kind, response.status_code, False, "mismatch: x-request-id")
        if response.status_code == 404 and model in self.unloaded:
            return Outcome(kind, 404, True, "404 while unloaded")
        if response.status_code != 200:
            return Outcome(
                kind, response.status_code, False, f"status {response.status_code}: {response.text[:200]}"
            )
        return None

    async def v2_json(self) -> Outcome:
        case = self.rng.choice(self.cases)
        rid = self.rid("v2j")
        body = {
            "id": rid,
            "inputs": [
                {
                    "name": case.input_name, "shape": list(case.x.shape), "datatype": "FP32",
                    "data": case.x.ravel().tolist(),
                }
            ],
        }
        response = await self.client.post(
            f"/v2/models/{case.model}/infer", json=body, headers={"x-request-id": rid}
        )
        early = self._check_status("v2_json", response, rid, case.model)
        if early:
            return early
        answer = response.json()
        if answer.get("id") != rid or answer.get("model_name") != case.model:
            return Outcome("v2_json", 200, False, "mismatch: id or model")
        out = next(o for o in answer["outputs"] if o["name"] == case.output_name)
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        ok = got.shape == case.expected.shape and np.allclose(got, case.expected, atol=1e-3, rtol=1e-3)
        return Outcome("v2_json", 200, ok, "" if ok else "mismatch: values")

    async def v2_binary(self) -> Outcome:
        case = self.rng.choice(self.cases)
        rid = self.rid("v2b")
        raw = np.ascontiguousarray(case.x, dtype="<f4").tobytes()
        header = json.dumps({"id": rid, "inputs": [{
            "name": case.input_name, "shape": list(case.x.shape), "datatype": "FP32",
            "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": case.output_name, "parameters": {"binary_data": True}}]}).encode()
        response = await self.client.post(
            f"/v2/models/{case.model}/infer",
            content=header + raw,
            headers={
                "x-request-id": rid,
                "content-type": "application/octet-stream",
                HEADER: str(len(header)),
            },
        )
        early = self._check_status("v2_binary", response, rid, case.model)
        if early:
            return early
        length = int(response.headers[HEADER])
        meta = json.loads(response.content[:length])
        if meta.get("id") != rid:
            return Outcome("v2_binary", 200, False, "mismatch: id")
        out = meta["outputs"][0]
        got = np.frombuffer(response.content[length:], dtype="<f4").reshape(out["shape"])
        ok = got.shape == case.expected.shape and np.allclose(got, case.expected, atol=1e-3, rtol=1e-3)
        return Outcome("v2_binary", 200, ok, "" if ok else "mismatch: values")

    async def _v1(self, kind: str, model: str, content: bytes, media: str, expected: Any) -> Outcome:
        rid = self.rid(kind)
        response = await self.client.post(f"/v1/models/{model}/predict", content=content,
                                          headers={"x-request-id": rid, "content-type": media})
        early = self._check_status(kind, response, rid, model)
        if early:
            return early
        ok = same_prediction(response.json(), expected)
        return Outcome(kind, 200, ok, "" if ok else "mismatch: prediction")

    async def v1_image(self) -> Outcome:
        data, expected = self.rng.choice(self.images)
        assert self.image_model
        return await self._v1("v1_image", self.image_model, data, "image/png", expected)

    async def v1_text(self) -> Outcome:
        text, expected = self.rng.choice(self.texts)
        assert self.text_model
        return await self._v1("v1_text", self.text_model, text.encode(), "text/plain", expected)

    async def v1_audio(self) -> Outcome:
        data, expected = self.rng.choice(self.audios)
        assert self.audio_model
        return await self._v1("v1_audio", self.audio_model, data, "audio/wav", expected)

    # -- bad requests: each must be a 4xx with a JSON error body --

    async def _refused(self, kind: str, method_path: str, content: bytes, headers: dict[str, str]) -> Outcome:
        rid = self.rid(kind)
        response = await self.client.post(
            method_path, content=content, headers={"x-request-id": rid, **headers}
        )
        if response.status_code >= 500:
            return Outcome(kind, response.status_code, False, f"5xx: {response.text[:200]}")
        try:
            body = response.json()
            shaped = set(body) == {"error", "code"}
        except ValueError:
            shaped = False
        ok = 400 <= response.status_code < 500 and shaped
        return Outcome(kind, response.status_code, ok, "" if ok else f"not refused: {response.status_code}")

    def _v2_path(self) -> tuple[V2Case, str]:
        case = self.rng.choice(self.cases)
        return case, f"/v2/models/{case.model}/infer"

    async def bad_truncated_png(self) -> Outcome:
        if not self.image_model or not self.images:
            return await self.bad_json()
        data = self.rng.choice(self.images)[0]
        return await self._refused("bad_truncated_png", f"/v1/models/{self.image_model}/predict",
                                   data[: len(data) // 2], {"content-type": "image/png"})

    async def bad_truncated_wav(self) -> Outcome:
        if not self.audio_model or not self.audios:
            return await self.bad_json()
        return await self._refused("bad_truncated_wav", f"/v1/models/{self.audio_model}/predict",
                                   self.rng.choice(self.audios)[0][:30], {"content-type": "audio/wav"})

    async def bad_datatype(self) -> Outcome:
        case, path = self._v2_path()
        body = {"inputs": [{"name": case.input_name, "shape": list(case.x.shape), "datatype": "INT64",
                            "data": [1] * case.x.size}]}
        return await self._refused(
            "bad_datatype", path, json.dumps(body).encode(), {"content-type": "application/json"}
        )

    async def bad_name(self) -> Outcome:
        case, path = self._v2_path()
        body = {"inputs": [{"name": "nope", "shape": list(case.x.shape), "datatype": "FP32",
                            "data": case.x.ravel().tolist()}]}
        return await self._refused(
            "bad_name", path, json.dumps(body).encode(), {"content-type": "application/json"}
        )

    async def bad_huge_dims(self) -> Outcome:
        case, path = self._v2_path()
        shape = [1_000_000_000, *case.x.shape[1:]]
        body = {"inputs": [{"name": case.input_name, "shape": shape, "datatype": "FP32", "data": [0.0]}]}
        return await self._refused(
            "bad_huge_dims", path, json.dumps(body).encode(), {"content-type": "application/json"}
        )

    async def bad_json(self) -> Outcome:
        _, path = self._v2_path()
        return await self._refused("bad_json", path, b'{"inputs": [{"name": "x", "shape": [1', {})

    async def bad_gzip_bomb(self) -> Outcome:
        _, path = self._v2_path()
        return await self._refused("bad_gzip_bomb", path, self.bomb,
                                   {"content-encoding": "gzip", "content-type": "application/json"})

    async def bad_truncated_gzip(self) -> Outcome:
        case, path = self._v2_path()
        body = gzip.compress(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": case.input_name, "shape": list(case.x.shape), "datatype": "FP32",
                            "data": case.x.ravel().tolist(),
                        }
                    ]
                }
            ).encode()
        )
        return await self._refused("bad_truncated_gzip", path, body[: len(body) * 2 // 3],
                                   {"content-encoding": "gzip", "content-type": "application/json"})

    async def bad_binary_header(self) -> Outcome:
        _, path = self._v2_path()
        return await self._refused("bad_binary_header", path, b'{"inputs": []}',
                                   {HEADER: "100000", "content-type": "application/octet-stream"})

    async def bad_text_encoding(self) -> Outcome:
        if not self.text_model:
            return await self.bad_json()
        return await self._refused(
            "bad_text_encoding", f"/v1/models/{self.text_model}/predict", b"\xff\xfe\xfa bad",
            {"content-type": "text/plain"},
        )

    async def _raw(self, path: str, headers: dict[str, str], chunks: list[bytes], pause_s: float,
                   stall: bool = False) -> tuple[int, dict[str, str], bytes]:
        """A request over a raw socket, its body sent in `chunks` with pauses (or stopped half way)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.slow_now += 1
        self.report.max_slow_connections = max(self.report.max_slow_connections, self.slow_now)
        try:
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            writer.write(head.encode())
            try:
                for i, chunk in enumerate(chunks):
                    if stall and i == len(chunks) // 2:
                        break  # the rest never comes
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(pause_s)
            except ConnectionError:
                self.report.notes["raw: server closed while the body was sent (answered early)"] += 1
            raw = await asyncio.wait_for(reader.read(), timeout=self.body_timeout_s + 60)
        finally:
            self.slow_now -= 1
            writer.close()
        head_part, _, body = raw.partition(b"\r\n\r\n")
        lines = head_part.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, parsed, body

    async def slow_drip(self) -> Outcome:
        case, path = self._v2_path()
        rid = self.rid("slow")
        body = json.dumps(
            {
                "id": rid,
                "inputs": [
                    {
                        "name": case.input_name, "shape": list(case.x.shape), "datatype": "FP32",
                        "data": case.x.ravel().tolist(),
                    }
                ],
            }
        ).encode()
        step = max(1, len(body) // 10)
        chunks = [body[i:i + step] for i in range(0, len(body), step)]
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "x-request-id": rid}
        try:
            status, got_headers, raw = await self._raw(path, headers, chunks, pause_s=0.2)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            return Outcome("slow_drip", None, False, f"lost: {type(exc).__name__}")
        if status == 404 and case.model in self.unloaded:
            return Outcome("slow_drip", 404, True, "404 while unloaded")
        if status != 200 or got_headers.get("x-request-id") != rid:
            return Outcome("slow_drip", status, False, f"status {status}")
        answer = json.loads(raw)
        out = answer["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        ok = answer.get("id") == rid and np.allclose(got, case.expected, atol=1e-3, rtol=1e-3)
        return Outcome("slow_drip", 200, ok, "" if ok else "mismatch: values")

    async def stalled_body(self) -> Outcome:
        if self.rng.random() > 0.2:  # rarer than the others: each one holds a connection for the body timeout
            return await self.bad_json()
        _, path = self._v2_path()
        body = b'{"inputs": [' + b" " * 1000 + b"]}"
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        try:
            status, _, raw = await self._raw(path, headers, [body[:500], body[500:]], pause_s=0.0, stall=True)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            return Outcome("stalled_body", None, False, f"lost: {type(exc).__name__}")
        ok = status == 408 and b"request_body_timeout" in raw
        return Outcome("stalled_body", status, ok, "" if ok else f"status {status}")


def same_prediction(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The same labels (scores to 1e-3) or the same transcript, item by item."""
    a, b = got.get("predictions", []), expected.get("predictions", [])
    if len(a) != len(b) or got.get("model") != expected.get("model"):
        return False
    for x, y in zip(a, b, strict=True):
        if "text" in y and x.get("text") != y["text"]:
            return False
        if "labels" in y:
            if [label["label"] for label in x.get("labels", [])] != [label["label"] for label in y["labels"]]:
                return False
            if any(
                abs(p["score"] - q["score"]) > 1e-3 for p, q in zip(x["labels"], y["labels"], strict=True)
            ):
                return False
    return True


# ---- the run ------------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> Report:
    report = Report(duration_s=args.duration, concurrency=args.concurrency, settle_s=args.settle)
    work = Path(tempfile.mkdtemp(prefix="deepserve-soak-"))
    repository = work / "repo"
    shutil.copytree(args.repository, repository)
    log = Path(args.log) if args.log else work / "server.log"
    env = {"DEEPSERVE_REQUEST_BODY_TIMEOUT_S": str(args.body_timeout), "DEEPSERVE_SHUTDOWN_GRACE_S": "10"}
    process = start_server(repository, args.port, log, env)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{args.port}", timeout=120, limits=limits
        ) as client:
            await wait_ready(client, process)
            rng = np.random.default_rng(args.seed)
            cases = await v2_cases(client, repository, args.v2, rng, per_model=16)
            images = [png(digit_like(rng)) for _ in range(16)] if args.image else []
            audios = [wav(tone(rng)) for _ in range(8)] if args.audio else []
            refs_i = [(d, await reference(client, args.image, d, "image/png")) for d in images]
            refs_t = [(t, await reference(client, args.text, t.encode(), "text/plain")) for t in TEXTS] \
                if args.text else []
            refs_a = [(d, await reference(client, args.audio, d, "audio/wav")) for d in audios]
            traffic = Traffic(
                client,
                args.port,
                report,
                cases=cases,
                images=refs_i,
                texts=refs_t,
                audios=refs_a,
                image_model=args.image,
                text_model=args.text,
                audio_model=args.audio,
                cycle=args.cycle,
                body_timeout_s=args.body_timeout,
                rng=random.Random(args.seed),
            )
            await run_phase(traffic, client, process, report, args)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


async def reference(
    client: httpx.AsyncClient, model: str | None, content: bytes, media: str
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/models/{model}/predict", content=content, headers={"content-type": media}
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


async def run_phase(traffic: Traffic, client: httpx.AsyncClient, process: subprocess.Popen[bytes],
                    report: Report, args: argparse.Namespace) -> None:
    started = time.monotonic()
    stop_at = started + args.duration

    async def worker() -> None:
        while time.monotonic() < stop_at:
            record(report, await traffic.one())

    async def chaos() -> None:
        next_reload, next_cycle = started + args.reload_every, started + args.cycle_every
        while time.monotonic() < stop_at:
            await asyncio.sleep(1)
            now = time.monotonic()
            if args.reload and now >= next_reload:
                next_reload += args.reload_every
                response = await client.post(f"/v2/repository/models/{args.reload}/load")
                report.chaos[f"reload {args.reload}: {response.status_code}"] += 1
            if args.cycle and now >= next_cycle and now + 8 < stop_at:
                next_cycle += args.cycle_every
                traffic.unloaded.add(args.cycle)
                response = await client.post(f"/v2/repository/models/{args.cycle}/unload")
                report.chaos[f"unload {args.cycle}: {response.status_code}"] += 1
                await asyncio.sleep(5)
                response = await client.post(f"/v2/repository/models/{args.cycle}/load")
                report.chaos[f"load {args.cycle}: {response.status_code}"] += 1
                await asyncio.sleep(2)  # answers to requests sent while it was unloaded may still arrive
                traffic.unloaded.discard(args.cycle)

    async def monitor() -> None:
        while True:
            report.samples.append(
                Sample(
                    round(time.monotonic() - started, 1), round(proc_rss_mb(process.pid), 1),
                    proc_fds(process.pid), established(args.port),
                )
            )
            if time.monotonic() >= stop_at:
                return
            await asyncio.sleep(5)

    monitor_task = asyncio.create_task(monitor())
    await asyncio.gather(chaos(), *(worker() for _ in range(args.concurrency)))
    await asyncio.sleep(2)  # connections settle before the last sample
    report.samples.append(Sample(round(time.monotonic() - started, 1), round(proc_rss_mb(process.pid), 1),
                                 proc_fds(process.pid), established(args.port)))
    monitor_task.cancel()
    report.duration_s = time.monotonic() - started


def record(report: Report, outcome: Outcome) -> None:
    report.requests += 1
    report.by_kind[outcome.kind] += 1
    report.statuses[str(outcome.status)] += 1
    if outcome.note:
        report.notes[f"{outcome.kind}: {outcome.note[:80]}"] += 1
    if outcome.status is not None and outcome.status >= 500:
        report.server_errors[f"{outcome.kind} {outcome.status}"] += 1
    elif outcome.ok:
        return
    elif outcome.status is None:
        report.lost += 1
    elif outcome.note.startswith("mismatch"):
        report.mismatched += 1
    elif outcome.kind.startswith("bad_") or outcome.kind == "stalled_body":
        report.bad_refusals += 1
    else:
        report.mismatched += 1  # a good request answered with the wrong status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True, help="model repository (copied; never changed)")
    p.add_argument("--duration", type=float, default=1800, help="seconds of traffic")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--port", type=int, default=38100)
    p.add_argument("--settle", type=float, default=300, help="RSS drift is measured from this second on")
    p.add_argument("--v2", nargs="+", default=["mlp", "cnn"], help="models for v2 JSON/binary traffic")
    p.add_argument("--image", default="cnn", help="image-classification model for /v1 ('' for none)")
    p.add_argument("--text", default="text", help="text-classification model for /v1 ('' for none)")
    p.add_argument("--audio", default="speech", help="speech-recognition model for /v1 ('' for none)")
    p.add_argument("--reload", default="cnn", help="model reloaded every 30 s ('' for none)")
    p.add_argument("--cycle", default="mlp", help="model unloaded and loaded every 120 s ('' for none)")
    p.add_argument("--reload-every", type=float, default=30, help="seconds between reloads")
    p.add_argument("--cycle-every", type=float, default=120, help="seconds between unload/load cycles")
    p.add_argument(
        "--body-timeout", type=float, default=20.0, help="DEEPSERVE_REQUEST_BODY_TIMEOUT_S of the server"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", help="server log file (default: in the temporary folder)")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--check", action="store_true", help="exit 1 when a bar fails")
    return p


def run(argv: list[str]) -> dict[str, Any]:
    """The summary of a soak run with these command-line arguments (the test suite's short soak)."""
    return asyncio.run(soak(parser().parse_args(argv))).summary()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = asyncio.run(soak(args)).summary()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 1 if args.check and summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
