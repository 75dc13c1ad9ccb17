"""Does a big v2 body stall other models? A small model's p99 at c=8, alone and while big JSON bodies arrive.

Serves two models from one `python -m service serve` process on loopback: `small` (x FP32 [B, 64] ->
logits [B, 10]) and `big` (x FP32 [B, N] -> sum [B], with N chosen so one JSON request is about
`--big-mb` MB). Each round runs wrk on `small` at c=8 alone, then again while `--big-clients` threads
each send the big JSON body back to back; the figure is loaded p99 / alone p99 (bar: at most 3x),
the median over rounds. `--tree` picks the source trees to serve (one server each, measured in turn
every round: all alone, then all loaded, so a shared machine's drift hits each alike): old code is
measured from a `git worktree add /tmp/old <commit>` checkout beside this one:

    nice -n 10 .venv/bin/python bench/event_loop.py --tree /tmp/old . --port 48101
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto]) -> bytes:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_repo(repo: Path, big_elements: int) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "W")
    small = _model([helper.make_node("MatMul", ["x", "W"], ["logits"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w])
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    big = _model([helper.make_node("ReduceSum", ["x", "axes"], ["sum"], keepdims=0)],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", big_elements])],
                 [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch"])], [axes])
    for name, data in (("small", small), ("big", big)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(data)


def json_body(elements: int, seed: int = 0) -> bytes:
    """A v2 JSON request as a Python client writes it (json.dumps of float values)."""
    x = np.random.default_rng(seed).random((1, elements), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, elements], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return json.dumps(body).encode()


def wrk_p99(url: str, body_file: Path, seconds: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, requests) of wrk at c=8 posting `body_file`."""
    cmd = ["wrk", "-t", "2", "-c", "8", "-d", f"{seconds}s", "--latency", "--timeout", "30s",
           "-s", str(HERE / "post.lua"), url, "--", str(body_file), "application/json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}

    def ms(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s|m)", out).groups()  # type: ignore[union-attr]
        return float(value) * units[unit]

    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"wrk saw {bad.group(1)} failed requests to the small model:\n{out}")
    return ms("50"), ms("99"), done


class BigSenders:
    """`clients` threads, each posting the big body back to back on its own connection."""

    def __init__(self, url: str, body: bytes, clients: int) -> None:
        self.url, self.body = url, body
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.seconds: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=300, headers={"content-type": "application/json"}) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                status = client.post(self.url, content=self.body).status_code
                self.statuses[status] += 1
                self.seconds.append(time.perf_counter() - started)

    def __enter__(self) -> BigSenders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready")


def threshold(repeats: int) -> None:
    """Inline decode vs a round trip through a codec worker, by JSON body size (for codec_offload_bytes)."""
    import asyncio

    sys.path.insert(0, str(HERE.parent))
    from service.protocol import codec
    from service.protocol.pool import CodecPool

    async def run() -> None:
        limits = codec.DecodeLimits()
        pool = CodecPool(workers=1, min_bytes=0, limits=limits)
        try:
            await pool.decode(json_body(10), content_encoding=None, header_length=None)  # start the worker
            for elements in (200, 800, 3200, 12800, 51200):
                body = json_body(elements)
                inline, remote = [], []
                for _ in range(repeats):
                    started = time.perf_counter()
                    codec.decode_body(body, content_encoding=None, header_length=None, limits=limits)
                    inline.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await pool.decode(body, content_encoding=None, header_length=None)
                    remote.append(time.perf_counter() - started)
                print(
                    f"{len(body) / 1024:8.1f} KiB JSON: inline {statistics.median(inline) * 1e3:7.2f} ms of "
                    f"event loop | via a worker {statistics.median(remote) * 1e3:7.2f} ms round trip",
                    flush=True,
                )
        finally:
            pool.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree",
        type=Path,
        nargs="+",
        default=[HERE.parent],
        help="source trees to serve, one server each (ports --port, --port+1, ...), measured in turn "
        "every round (default: this tree)",
    )
    parser.add_argument("--port", type=int, default=48100)
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alone/loaded pairs; the median ratio is reported"
    )
    parser.add_argument("--big-mb", type=float, default=32.0, help="size of each big JSON body in MB")
    parser.add_argument("--big-clients", type=int, default=4)
    parser.add_argument("--threshold", action="store_true",
                        help="instead: time inline decoding against a worker round trip by body size")
    args = parser.parse_args()
    if args.threshold:
        threshold(repeats=15)
        return

    # json.dumps of float32 values as Python floats: about 20 bytes per element
    per_element = len(json_body(10_000)) / 10_000
    elements = int(args.big_mb * 1e6 / per_element)
    big_body = json_body(elements)
    trees = [tree.resolve() for tree in args.tree]
    with tempfile.TemporaryDirectory(prefix="deepserve-event-loop-") as tmp:
        repo = Path(tmp) / "repo"
        write_repo(repo, elements)
        small_file = Path(tmp) / "small.json"
        small_file.write_bytes(json_body(64))
        servers = []
        try:
            for index, tree in enumerate(trees):
                url = f"http://127.0.0.1:{args.port + index}"
                log = (Path(tmp) / f"server-{index}.log").open("wb")
                env = {**os.environ, "PYTHONPATH": str(tree), "DEEPSERVE_MODEL_REPOSITORY": str(repo),
                       "DEEPSERVE_PORT": str(args.port + index), "DEEPSERVE_HOST": "127.0.0.1",
                       "DEEPSERVE_LOG_LEVEL": "WARNING"}
                servers.append(
                    (
                        tree,
                        url,
                        subprocess.Popen(
                            [sys.executable, "-m", "service", "serve"],
                            cwd=tree,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        ),
                    )
                )
            for _, url, process in servers:
                wait_ready(url, process)
                wrk_p99(f"{url}/v2/models/small/infer", small_file, 1)  # warm up
            print(
                f"big body {len(big_body) / 1e6:.1f} MB, {elements} elements, {args.big_clients} clients; "
                f"small model wrk c=8, {args.seconds} s per run; trees interleaved round by round",
                flush=True,
            )
            ratios: dict[Path, list[float]] = {tree: [] for tree in trees}
            for round_ in range(1, args.rounds + 1):
                # every tree alone first, then every tree loaded (in turns: who goes first alternates), so no
                # alone run follows another tree's loaded run
                alone = {tree: wrk_p99(f"{url}/v2/models/small/infer", small_file, args.seconds)
                         for tree, url, _ in servers}
                turn = servers if round_ % 2 else servers[::-1]
                for tree, url, _ in turn:
                    label = f"round {round_} {tree.name}"
                    ratios[tree].append(loaded(url, small_file, big_body, args, alone[tree], label))
            for tree in trees:
                print(
                    f"{tree} ({_commit(tree)}): median p99 rise x{statistics.median(ratios[tree]):.2f} over "
                    f"{args.rounds} rounds (bar: at most x3)"
                )
        finally:
            for _, _, process in servers:
                process.terminate()
                process.wait(60)


def loaded(url: str, small_file: Path, big_body: bytes, args: argparse.Namespace,
           alone: tuple[float, float, int], label: str) -> float:
    """The small model with the big senders running: returns loaded p99 / alone p99."""
    small_url, big_url = f"{url}/v2/models/small/infer", f"{url}/v2/models/big/infer"
    p50_alone, p99_alone, n_alone = alone
    with BigSenders(big_url, big_body, args.big_clients) as big:
        p50_busy, p99_busy, n_busy = wrk_p99(small_url, small_file, args.seconds)
    ratio = p99_busy / p99_alone
    big_s = statistics.median(big.seconds) if big.seconds else float("nan")
    print(f"{label}: alone p50 {p50_alone:.2f} ms p99 {p99_alone:.2f} ms ({n_alone} req) | with big bodies "
          f"p50 {p50_busy:.2f} ms p99 {p99_busy:.2f} ms ({n_busy} req) | p99 x{ratio:.2f} | big requests "
          f"{dict(big.statuses)}, median {big_s:.2f} s", flush=True)
    return ratio


def _commit(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
