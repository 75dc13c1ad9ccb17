"""Benchmark: deepserve beside PyTriton (Triton's front end) and raw in-process ONNX Runtime, in one run.

    python bench/run.py                      # 4 models x JSON/binary x c=1/8/64, 2 runs x 5 s per cell
    python bench/run.py --models small --bodies binary --concurrency 1 64 --seconds 3
    python bench/run.py --variant workers2:DEEPSERVE_WORKERS=2   # another deepserve configuration as a column
    python bench/run.py --rss model_repository --soak 300   # idle RSS, RSS after 1 and 5 minutes of load

Every figure that matters is a ratio taken in the same run, since the machine is shared and its speed
drifts: for each row (model, body, concurrency) the runs are interleaved — raw ONNX Runtime at its best
batch size, then deepserve under wrk, then PyTriton under wrk, repeated — and the row reports deepserve's
req/s over PyTriton's and over raw's items/s measured in that row. All three use the same ONNX file and
the same ONNX Runtime session options (2 intra-op threads). The PyTriton peer runs from its own venv
(`bench/setup_pytriton.sh`); without it the run goes on with deepserve and raw only.
Results go to bench/results/ (JSON and a Markdown table) and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
from nets import MODELS, THREADS, BenchModel  # noqa: E402
from server import run_server, wait_ready  # noqa: E402  (run_server: the --rss mode)

PYTRITON_PYTHON = HERE / ".pytriton-venv" / "bin" / "python"
DEEPSERVE_PORT, PYTRITON_PORT = 58000, 58100  # this bench's port range; variants use 58010, 58020, ...
DEFAULT_CONCURRENCY = [1, 8, 64]


# ---- raw ONNX Runtime ---------------------------------------------------------------------------------


class Raw:
    """In-process sessions with the servers' options; items/s at a batch size for a few seconds."""

    def __init__(self, repo: Path, providers: list[str] | None = None) -> None:
        self.repo = repo
        self.providers = providers or ["CPUExecutionProvider"]
        self.sessions: dict[str, ort.InferenceSession] = {}

    def session(self, model: BenchModel) -> ort.InferenceSession:
        if model.name not in self.sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as deepserve's default
            self.sessions[model.name] = ort.InferenceSession(
                str(self.repo / model.name / "1" / "model.onnx"), sess_options=options,
                providers=self.providers)
        return self.sessions[model.name]

    def items_per_s(self, model: BenchModel, batch: int, seconds: float) -> float:
        session, feed = self.session(model), model.example(batch)
        session.run(None, feed)
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
            session.run(None, feed)
            runs += 1
        return runs * batch / elapsed

    def sweep(self, model: BenchModel, seconds: float) -> dict[int, float]:
        return {b: self.items_per_s(model, b, seconds) for b in (1, 4, 8, 16, 32, 64) if b <= model.max_batch}


# ---- request bodies and wrk ---------------------------------------------------------------------------

Body = tuple[bytes, str, str | None]  # body, content type, Inference-Header-Content-Length


def json_body(model: BenchModel) -> Body:
    inputs = [
        {"name": name, "shape": list(a.shape), "datatype": model.inputs[name][1], "data": a.ravel().tolist()}
        for name, a in model.example(1).items()
    ]
    return json.dumps({"inputs": inputs}).encode(), "application/json", None


def binary_body(model: BenchModel, batch: int = 1) -> Body:
    arrays = model.example(batch)
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(a.shape), "datatype": model.inputs[name][1],
                    "parameters": {"binary_data_size": a.nbytes}} for name, a in arrays.items()],
        "outputs": [{"name": model.output, "parameters": {"binary_data": True}}],
    }).encode()
    payload = header + b"".join(a.tobytes() for a in arrays.values())
    return payload, "application/octet-stream", str(len(header))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(url: str, body: Body, *, concurrency: int, seconds: float) -> Run:
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as f:
        f.write(body[0])
    args = [f.name, body[1]] + ([body[2]] if body[2] else [])
    cmd = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
           "--latency", "--timeout", "30s", "-s", str(HERE / "post.lua"), url, "--", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"Socket errors: .*?timeout (\d+)", out))
    return Run(rps, p50, p99, errors)


# ---- servers ------------------------------------------------------------------------------------------


def wait_model(url: str, name: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server at {url} exited with {process.returncode} before {name} was ready")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=2).status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} at {url} not ready after {timeout} s")


@contextlib.contextmanager
def pytriton(repo: Path, log_dir: Path, models: list[str]) -> Iterator[str | None]:
    """The PyTriton peer on PYTRITON_PORT, or None (with the reason on stderr) when it cannot start."""
    if not PYTRITON_PYTHON.exists():
        print(f"PyTriton peer skipped: {PYTRITON_PYTHON} is missing; run bench/setup_pytriton.sh",
              file=sys.stderr)
        yield None
        return
    port_free(PYTRITON_PORT)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    library_path = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    env = {**os.environ, "LD_LIBRARY_PATH": library_path}
    log = (log_dir / "pytriton.log").open("wb")
    process = subprocess.Popen([str(PYTRITON_PYTHON), str(HERE / "triton_peer.py"), str(repo),
                                "--port", str(PYTRITON_PORT), "--threads", str(THREADS)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{PYTRITON_PORT}"
    try:
        wait_ready(url, process, timeout=300)  # Triton is ready before PyTriton has loaded any model
        for name in models:
            wait_model(url, name, process)
        yield url
    finally:
        stop(process, signal.SIGINT)
        log.close()


SESSIONS: dict[str, int] = {}


def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send `sig` to the server's whole process group; SIGKILL it if it has not exited within 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def port_free(port: int) -> None:
    """Refuse to start beside a server left on `port` (readiness checks would reach it instead)."""
    import socket

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use (a server from an earlier run?); stop it first")


@contextlib.contextmanager
def deepserve(repo: Path, log_dir: Path, port: int, env: dict[str, str], tree: Path = ROOT) -> Iterator[str]:
    """`python -m service serve` on `port` (loopback) with the given DEEPSERVE_* overrides, from the source
    tree `tree` (another checkout: `bench/ab.py`)."""
    port_free(port)
    full_env = {**os.environ, "DEEPSERVE_MODEL_REPOSITORY": str(repo), "DEEPSERVE_HOST": "127.0.0.1",
                "DEEPSERVE_PORT": str(port), "DEEPSERVE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(tree), **env}
    log = (log_dir / f"deepserve-{port}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=tree, env=full_env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    SESSIONS[url] = process.pid  # its own session: workers and codec processes share its id
    try:
        wait_ready(url, process, timeout=300)
        yield url
    finally:
        stop(process, signal.SIGTERM)
        log.close()


# ---- the interleaved run ------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    body: str
    concurrency: int
    raw_best_batch: int
    raw: list[float] = field(default_factory=list)
    """Raw ONNX Runtime items/s at its best batch size, one per repeat, measured in this row."""
    servers: dict[str, list[Run]] = field(default_factory=dict)

    def mean(self, server: str, what: str) -> float:
        return statistics.fmean(getattr(r, what) for r in self.servers[server])

    def errors(self, server: str) -> int:
        return sum(r.errors for r in self.servers[server])


def drain(url: str, body: Body) -> None:
    """One request behind whatever wrk left queued: when it answers, the server is idle again, so its
    backlog does not eat into the next server's run (FIFO queues in both servers)."""
    headers = {"Content-Type": body[1], **({"Inference-Header-Content-Length": body[2]} if body[2] else {})}
    with contextlib.suppress(OSError):
        urllib.request.urlopen(urllib.request.Request(url, data=body[0], headers=headers), timeout=300).read()


def run_row(model: BenchModel, body_kind: str, concurrency: int, urls: dict[str, str], raw: Raw, best: int,
            repeats: int, seconds: float) -> Row:
    body = json_body(model) if body_kind == "json" else binary_body(model)
    row = Row(model.name, body_kind, concurrency, best)
    for name, url in urls.items():  # warm connections, caches and each server's batch sizes
        wrk(f"{url}/v2/models/{model.name}/infer", body, concurrency=concurrency, seconds=1)
        drain(f"{url}/v2/models/{model.name}/infer", body)
        row.servers[name] = []
    for _ in range(repeats):
        row.raw.append(raw.items_per_s(model, best, min(seconds, 3.0)))
        for name, url in urls.items():
            row.servers[name].append(wrk(f"{url}/v2/models/{model.name}/infer", body, concurrency=concurrency,
                                         seconds=seconds))
            drain(f"{url}/v2/models/{model.name}/infer", body)
    raw_mean = statistics.fmean(row.raw)
    parts = [f"{model.name:8s} {body_kind:6s} c={concurrency:<3d} raw {raw_mean:7.1f}/s"]
    for name in urls:
        parts.append(f"{name} {row.mean(name, 'rps'):7.1f} req/s p50 {row.mean(name, 'p50_ms'):7.2f} "
                     f"p99 {row.mean(name, 'p99_ms'):7.2f} err {row.errors(name)}")
    print("  " + " | ".join(parts), flush=True)
    return row


def table(rows: list[Row], servers: list[str], sweeps: dict[str, dict[int, float]]) -> str:
    peer = "pytriton" if "pytriton" in servers else None
    ours = [s for s in servers if s != "pytriton"]
    head = ["model", "body", "c"]
    for s in servers:
        head += [f"{s} req/s", f"{s} p50/p99 ms"]
    head += [f"{s} / pytriton" for s in ours] if peer else []
    head += [f"{s} % of raw" for s in servers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.model, row.body, str(row.concurrency)]
        for s in servers:
            err = row.errors(s)
            cells += [f"{row.mean(s, 'rps'):.0f}" + (f" ({err} err)" if err else ""),
                      f"{row.mean(s, 'p50_ms'):.2f} / {row.mean(s, 'p99_ms'):.2f}"]
        if peer:
            cells += [_ratio(row.mean(s, 'rps'), row.mean(peer, 'rps')) for s in ours]
        raw = statistics.fmean(row.raw)
        cells += [f"{100 * row.mean(s, 'rps') / raw:.0f}%" for s in servers]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, by_batch in sweeps.items():
        best = max(by_batch, key=lambda b: by_batch[b])
        lines.append(f"raw ONNX Runtime {name} (sweep at start): best {by_batch[best]:.0f} items/s "
                     f"at batch {best} (" + ", ".join(f"b{b}: {v:.0f}" for b, v in by_batch.items()) + ")")
    return "\n".join(lines)


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def targets(rows: list[Row], ours: list[str]) -> str:
    """The issue's targets, met or not, from this run's rows: one column per deepserve configuration."""
    def find(model: str, body: str, c: int) -> Row | None:
        return next((r for r in rows if (r.model, r.body, r.concurrency) == (model, body, c)), None)

    out = ["| target | " + " | ".join(ours) + " |", "|---|" + "---|" * len(ours)]

    def verdict(value: float, ok: bool, fmt: str) -> str:
        return fmt.format(value) + (" met" if ok else " **not met**")

    def ratio(model: str, body: str, c: int, need: float, label: str) -> None:
        row = find(model, body, c)
        if row is None or "pytriton" not in row.servers:
            return
        theirs = row.mean("pytriton", "rps")
        if theirs <= 0:
            out.append(f"| {label} | " + " | ".join("PyTriton finished no request" for _ in ours) + " |")
            return
        cells = [verdict(row.mean(s, "rps") / theirs, row.mean(s, "rps") / theirs >= need, "{:.2f}x")
                 for s in ours]
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    ratio("small", "json", 64, 2.0, "small CNN, JSON, c=64: ≥ 2x PyTriton")
    ratio("small", "binary", 64, 2.0, "small CNN, binary, c=64: ≥ 2x PyTriton")
    ratio("resnet18", "json", 64, 1.2, "ResNet-18, JSON, c=64: ≥ 1.2x PyTriton")
    row = find("resnet18", "json", 64)
    if row:
        tails = [row.mean(s, "p99_ms") / max(row.mean(s, "p50_ms"), 1e-9) for s in ours]
        out.append("| ResNet-18, JSON, c=64: p99 ≤ 2x p50 | "
                   + " | ".join(verdict(t, t <= 2, "p99/p50 {:.2f}") for t in tails) + " |")
    binary = [r for r in rows if (r.model, r.body) == ("resnet18", "binary")]
    if binary:
        cells = []
        for s in ours:
            best = max(binary, key=lambda r: r.mean(s, "rps"))
            share = best.mean(s, "rps") / statistics.fmean(best.raw)
            cells.append(verdict(100 * share, share >= 0.9, "{:.0f}%") + f" (c={best.concurrency})")
        out.append("| ResNet-18, binary: ≥ 90% of raw best batch | " + " | ".join(cells) + " |")
    ratio("speech", "binary", 64, 1.5, "speech, binary, c=64: ≥ 1.5x PyTriton")
    row = find("small", "binary", 1)
    if row:
        out.append("| small CNN, binary, c=1: p50 ≤ 1 ms | " + " | ".join(
            verdict(row.mean(s, "p50_ms"), row.mean(s, "p50_ms") <= 1, "{:.2f} ms") for s in ours) + " |")
    return "\n".join(out)


def speed(args: argparse.Namespace) -> None:
    from nets import build  # torch, only for building the bench models

    repo = HERE / ".repo"
    build(repo)
    models = [MODELS[name] for name in args.models]
    raw = Raw(repo)
    print("raw ONNX Runtime (in process), batch sweep:", flush=True)
    sweeps = {m.name: raw.sweep(m, args.sweep_seconds) for m in models}
    for name, by_batch in sweeps.items():
        print(f"  {name}: " + ", ".join(f"b{b}: {v:.0f}/s" for b, v in by_batch.items()), flush=True)
    variants = dict(v.split(":", 1) for v in args.variant)
    overrides = dict(v.split("=", 1) for v in args.model_concurrency)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        urls = {"deepserve": stack.enter_context(deepserve(repo, Path(logs), DEEPSERVE_PORT, {}))}
        for index, (name, spec) in enumerate(variants.items(), start=1):
            env = dict(pair.split("=", 1) for pair in spec.split(",") if pair)
            urls[name] = stack.enter_context(deepserve(repo, Path(logs), DEEPSERVE_PORT + 10 * index, env))
        if not args.no_pytriton:
            peer = stack.enter_context(pytriton(repo, Path(logs), [m.name for m in models]))
            if peer:
                urls["pytriton"] = peer
        print("servers: " + ", ".join(f"{k} {v}" for k, v in urls.items()), flush=True)
        for model in models:
            best = max(sweeps[model.name], key=lambda b: sweeps[model.name][b])
            levels = ([int(c) for c in overrides[model.name].split(",")] if model.name in overrides
                      else args.concurrency)
            for body_kind in args.bodies:
                for c in levels:
                    rows.append(run_row(model, body_kind, c, urls, raw, best, args.repeats, args.seconds))
        servers = list(urls)
    report = table(rows, servers, sweeps) + "\n\n" + targets(rows, [s for s in servers if s != "pytriton"])
    print("\n" + report)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "speed.md").write_text(report + "\n")
    (out / "speed.json").write_text(
        json.dumps({"rows": [asdict(r) for r in rows], "raw_sweeps": sweeps}, indent=2))


# ---- CPU per request: what a code change costs, robust to a shared machine --------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (children excluded), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_cpu(url: str) -> float:
    """CPU seconds so far of every process and thread in the session of the server at `url` (`deepserve`
    starts each in its own session: uvicorn workers and codec processes included)."""
    pids = subprocess.run(["pgrep", "-s", str(SESSIONS[url])], capture_output=True, text=True).stdout.split()
    return sum(cpu_seconds(int(pid)) for pid in pids if Path(f"/proc/{pid}").exists())


def cost(args: argparse.Namespace) -> None:
    """Server CPU time per request (all threads, so ONNX Runtime's too) for deepserve and each --variant,
    one server at a time: the machine's other load changes how fast requests finish, much less what
    each one costs the server."""
    from nets import build

    repo = HERE / ".repo"
    build(repo)
    variants = {"deepserve": "", **dict(v.split(":", 1) for v in args.variant)}
    lines = ["| server | model | body | c | server CPU µs / request | req/s |", "|---|---|---|---|---|---|"]
    for name, spec in variants.items():
        env = dict(pair.split("=", 1) for pair in spec.split(",") if pair)
        with tempfile.TemporaryDirectory() as logs, deepserve(repo, Path(logs), DEEPSERVE_PORT, env) as url:
            for model_name in args.models:
                model = MODELS[model_name]
                for body_kind in args.bodies:
                    body = json_body(model) if body_kind == "json" else binary_body(model)
                    target = f"{url}/v2/models/{model_name}/infer"
                    for c in args.concurrency:
                        wrk(target, body, concurrency=c, seconds=1)
                        before = session_cpu(url)
                        run = wrk(target, body, concurrency=c, seconds=args.seconds)
                        spent = session_cpu(url) - before
                        per = 1e6 * spent / max(run.rps * round(args.seconds), 1)
                        line = f"| {name} | {model_name} | {body_kind} | {c} | {per:.0f} | {run.rps:.0f} |"
                        print(line, flush=True)
                        lines.append(line)
    print("\n".join(lines))


# ---- GPU: deepserve vs raw ONNX Runtime on the CUDA provider (bench/gpu.sh) ----------------------------

GPU_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def gpu(args: argparse.Namespace) -> None:
    """ResNet-18 and BERT-mini on the CUDA provider: raw items/s at batch 1/8/32, and deepserve (IO binding,
    batching up to 32) under wrk with requests of 1/8/32 items at c=1/8/64, items/s and % of raw."""
    from nets import build

    repo = HERE / ".repo-gpu"
    build(repo)
    providers = GPU_PROVIDERS if not args.allow_cpu else ["CPUExecutionProvider"]
    for name in ("resnet18", "bert"):
        (repo / name / "config.yaml").write_text(
            "max_batch_size: 32\nmax_queue_delay_ms: 2\nmax_queue_size: 2048\n"
            f"providers: {json.dumps(providers)}\n")
    raw = Raw(repo, providers)
    in_use = raw.session(MODELS["resnet18"]).get_providers()[0]
    if in_use != providers[0]:
        raise SystemExit(
            f"ONNX Runtime runs on {in_use} here, not {providers[0]}: no usable GPU (see its log above)")
    lines = [f"GPU run: {in_use}; {args.repeats} x {args.seconds:g} s per cell", "",
             "| model | items/request | c | deepserve items/s | p50 / p99 ms "
             "| raw items/s at that batch | % of raw |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as logs, deepserve(repo, Path(logs), DEEPSERVE_PORT, {}) as url:
        for name in ("resnet18", "bert"):
            model = MODELS[name]
            meta = json.loads(urllib.request.urlopen(f"{url}/v2/models/{name}").read())
            print(f"{name}: deepserve providers {meta['parameters']['providers']}", flush=True)
            for batch in (1, 8, 32):
                raw_rate = statistics.fmean(raw.items_per_s(model, batch, min(args.seconds, 3.0))
                                            for _ in range(args.repeats))
                body = binary_body(model, batch)
                target = f"{url}/v2/models/{name}/infer"
                for c in args.concurrency:
                    wrk(target, body, concurrency=c, seconds=1)
                    runs = [wrk(target, body, concurrency=c, seconds=args.seconds)
                            for _ in range(args.repeats)]
                    rate = statistics.fmean(r.rps for r in runs) * batch
                    line = (f"| {name} | {batch} | {c} | {rate:.0f}"
                            + (f" ({sum(r.errors for r in runs)} err)" if any(r.errors for r in runs) else "")
                            + f" | {statistics.fmean(r.p50_ms for r in runs):.2f}"
                            f" / {statistics.fmean(r.p99_ms for r in runs):.2f} | {raw_rate:.0f} | "
                            f"{100 * rate / raw_rate:.0f}% |")
                    print(line, flush=True)
                    lines.append(line)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---- memory -------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def memory(args: argparse.Namespace) -> None:
    repo = Path(args.rss)
    with tempfile.TemporaryDirectory() as logs, run_server(repo, log_dir=Path(logs),
                                                           env={"DEEPSERVE_LOG_LEVEL": "WARNING"}) as server:
        time.sleep(2)
        idle = rss_mib(server.process.pid)
        models = sorted({p.parent.parent.name for p in repo.glob("*/*/model.onnx")})
        print(f"idle RSS with {len(models)} models of {repo} loaded ({', '.join(models)}): {idle:.0f} MiB",
              flush=True)
        result: dict[str, object] = {"models": models, "idle_rss_mib": idle}
        if args.soak:
            meta = json.loads(urllib.request.urlopen(f"{server.url}/v2/models/{args.soak_model}").read())
            spec = meta["inputs"][0]
            shape = tuple(abs(d) for d in spec["shape"][1:])  # one item
            x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
            payload = {"inputs": [{"name": spec["name"], "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}
            body: Body = (json.dumps(payload).encode(), "application/json", None)
            target = f"{server.url}/v2/models/{args.soak_model}/infer"
            samples: dict[int, float] = {}
            errors = 0
            start = time.monotonic()
            for minute in range(1, int(args.soak // 60) + 1):
                errors += wrk(target, body, concurrency=32,
                              seconds=max(1, start + 60 * minute - time.monotonic())).errors
                samples[minute] = rss_mib(server.process.pid)
                print(f"  RSS after {minute} min of load on {args.soak_model}: {samples[minute]:.0f} MiB "
                      f"(failed requests so far: {errors})", flush=True)
            result.update(soak_model=args.soak_model, soak_rss_mib=samples, soak_errors=errors)
            if 1 in samples and len(samples) > 1:
                growth = 100 * (samples[max(samples)] / samples[1] - 1)
                result["growth_pct"] = growth
                print(f"RSS growth from minute 1 to {max(samples)}: {growth:+.1f}%")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--bodies", nargs="+", default=["json", "binary"], choices=["json", "binary"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=DEFAULT_CONCURRENCY)
    parser.add_argument("--model-concurrency", nargs="*", default=["resnet18=8,64"], metavar="MODEL=C1,C2",
                        help="concurrency levels for one model instead of --concurrency "
                             "(default: resnet18=8,64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved runs per row (means are reported)")
    parser.add_argument("--sweep-seconds", type=float, default=1.5,
                        help="seconds per raw batch size in the sweep")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=V[,ENV=V]",
                        help="also run deepserve with these DEEPSERVE_* settings as column NAME")
    parser.add_argument("--no-pytriton", action="store_true", help="leave the PyTriton peer out")
    parser.add_argument("--cost", action="store_true",
                        help="server CPU time per request instead of the table")
    parser.add_argument("--gpu", action="store_true",
                        help="the CUDA run of bench/gpu.sh instead of the CPU table")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="with --gpu: run on CPU (checks the script only)")
    parser.add_argument("--rss", metavar="REPO",
                        help="measure the server's RSS serving REPO instead of speed")
    parser.add_argument("--soak", type=float, default=0, help="with --rss: seconds of load (wrk, c=32)")
    parser.add_argument("--soak-model", default="mlp",
                        help="with --soak: model in REPO to load (1x28x28 input)")
    args = parser.parse_args()
    if args.cost:
        cost(args)
    elif args.gpu:
        gpu(args)
    elif args.rss:
        memory(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
