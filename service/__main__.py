"""`deepserve serve` / `python -m service`: build Settings, set up logging, run uvicorn.

Flags override `DEEPSERVE_*` environment variables, which override defaults. `--build-demo` builds
the demo model repository with the training package (a subprocess: the service never imports torch)
when the repository has no models yet, then serves it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from service.log import setup_logging
from service.settings import Settings

logger = logging.getLogger("service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve a model repository over HTTP")
    serve.add_argument("--model-repository", type=Path, help="model repository folder (DEEPSERVE_MODEL_REPOSITORY)")
    serve.add_argument("--host", help="address to listen on (DEEPSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (DEEPSERVE_PORT)")
    serve.add_argument("--workers", type=int, help="uvicorn worker processes (DEEPSERVE_WORKERS)")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(DEEPSERVE_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=["text", "json"], help="(DEEPSERVE_LOG_FORMAT)")
    serve.add_argument("--build-demo", action="store_true",
                       help="build the demo models into the repository first if it holds none (needs the train extra)")
    return parser


def build_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "model_repository": args.model_repository, "host": args.host, "port": args.port,
            "workers": args.workers, "log_level": args.log_level, "log_format": args.log_format,
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
    logger.info("building the demo models into %s (a few minutes on a CPU; later starts reuse them)", repository)
    result = subprocess.run([sys.executable, "-m", "models.cli", "build", "--out", str(repository)], check=False)
    if result.returncode != 0 and not has_models(repository):
        raise SystemExit(f"building the demo models failed (exit {result.returncode})")


def serve(settings: Settings) -> None:
    from service.app import tune_interpreter

    tune_interpreter()
    config: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_grace_s, "lifespan": "on", "server_header": False,
    }
    if settings.workers > 1:
        # Each worker process builds its own app from the same DEEPSERVE_* environment.
        for key, value in settings.model_dump(mode="json").items():
            if value is not None:
                os.environ[f"DEEPSERVE_{key.upper()}"] = value if isinstance(value, str) else _json(value)
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=settings.workers, **config)
        return
    from service.app import create_app

    _Server(uvicorn.Config(create_app(settings), **config)).run()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process dies by the signal
    (exit -15). Once queued and in-flight requests have drained, a clean shutdown should exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


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
