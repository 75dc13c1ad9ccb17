"""`deepserve serve` / `python -m service`: build Settings, set up logging, run uvicorn (or granian).

Flags override `DEEPSERVE_*` environment variables, which override defaults. `--build-demo` builds
the demo model repository with the training package (a subprocess: the service never imports torch)
when the repository has no models yet, then serves it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from pydantic import SecretStr

from service.log import setup_logging
from service.settings import MULTIPROCESS_DIR, Settings

logger = logging.getLogger("service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve a model repository over HTTP")
    serve.add_argument("--model-repository", type=Path,
                       help="model repository folder (DEEPSERVE_MODEL_REPOSITORY)")
    serve.add_argument("--host", help="address to listen on (DEEPSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (DEEPSERVE_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (DEEPSERVE_WORKERS)")
    serve.add_argument("--http-server", choices=["uvicorn", "granian"], help="(DEEPSERVE_HTTP_SERVER)")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="(DEEPSERVE_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=["text", "json"], help="(DEEPSERVE_LOG_FORMAT)")
    serve.add_argument("--build-demo", action="store_true",
                       help="build the demo models into the repository first if it holds none "
                            "(needs the train extra)")
    return parser


def build_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "model_repository": args.model_repository, "host": args.host, "port": args.port,
            "workers": args.workers, "log_level": args.log_level, "log_format": args.log_format,
            "http_server": args.http_server,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def has_models(repository: Path) -> bool:
    return repository.is_dir() and any(repository.glob("*/*/model.onnx"))


def build_demo(repository: Path) -> None:
    """Run `deepserve-train build` into `repository` when it has no models; progress goes to the terminal."""
    if has_models(repository):
        logger.info("model repository %s already has models; not rebuilding", repository)
        return
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("models") is None:
        raise SystemExit("--build-demo needs the training package: pip install -e '.[train]'")
    logger.info("building the demo models into %s (a few minutes on a CPU; later starts reuse them)",
                repository)
    result = subprocess.run([sys.executable, "-m", "models.cli", "build", "--out", str(repository)],
                            check=False)
    if result.returncode != 0 and not has_models(repository):
        raise SystemExit(f"building the demo models failed (exit {result.returncode})")


def serve(settings: Settings) -> None:
    if settings.workers > 1 or settings.http_server == "granian":
        share_metrics()  # before anything imports prometheus_client (service.app does)
    from service.app import tune_interpreter

    if settings.http_server == "granian":
        _serve_granian(settings)
        return
    tune_interpreter()
    config: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_grace_s, "lifespan": "on", "server_header": False,
    }
    if settings.workers > 1:
        export_settings(settings)  # each worker process builds its own app from the same environment
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=settings.workers, **config)
        return
    from service.app import create_app

    _Server(uvicorn.Config(create_app(settings), **config)).run()


def _serve_granian(settings: Settings) -> None:
    """granian: a supervisor process and `workers` processes, each running `create_app_from_env`."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    export_settings(settings)
    Granian(
        "service.app:create_app_from_env", factory=True, interface=Interfaces.ASGI, address=settings.host,
        port=settings.port, workers=settings.workers, log_access=settings.access_log,
        log_level=LogLevels(settings.log_level.lower()),
        workers_kill_timeout=max(1, math.ceil(settings.shutdown_grace_s)),
    ).serve()


def export_settings(settings: Settings) -> None:
    """Write the effective settings back as DEEPSERVE_* variables for worker processes (secrets included:
    `model_dump` would write SecretStr values as asterisks)."""
    for key, value in settings.model_dump(mode="python").items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
        os.environ[f"DEEPSERVE_{key.upper()}"] = str(value) if isinstance(value, str | Path) else _json(value)


def share_metrics() -> Path:
    """Before worker processes start: they write their Prometheus samples to one folder, so one scrape of
    /metrics counts every worker's requests, not only the one that answered it. `PROMETHEUS_MULTIPROC_DIR`
    when set (stale files in it are removed), else a new temporary folder."""
    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="deepserve-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIR] = str(folder)
    logger.info("worker processes share their metrics through %s", folder)
    return folder


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process dies by the signal
    (exit -15). Once queued and in-flight requests have drained, a clean shutdown should exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command is None:
        args = _parser().parse_args(["serve", *(argv or sys.argv[1:])])
    settings = build_settings(args)
    setup_logging(settings.log_level, settings.log_format)
    if args.build_demo:
        build_demo(settings.model_repository)
    serve(settings)


if __name__ == "__main__":
    main()
