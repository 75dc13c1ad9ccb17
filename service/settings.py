"""Process-wide settings from environment variables (prefix `DEEPSERVE_`) and CLI flags.

Built once in `service.__main__` and passed to `create_app(settings)`; nothing else reads
`os.environ`. Per-model settings live in `service.repository.config.ModelConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider")


class Settings(BaseSettings):
    """Server settings. Each field is also the environment variable `DEEPSERVE_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="DEEPSERVE_", env_nested_delimiter="__", extra="ignore", use_attribute_docstrings=True
    )

    model_repository: Path = Path("model_repository")
    """Folder laid out as `<model>/[config.yaml]` and `<model>/<version>/model.onnx`."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 in containers."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    workers: int = Field(1, ge=1)
    """Uvicorn worker processes (each loads every model; prefer one worker and more `instances`)."""
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    """Execution-provider preference for models whose config names none. The provider really in
    use is read back from the session and reported per model."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Default time a request may take end to end (queue + compute) before a 504."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies get 413 before they are read."""
    load_models: list[str] | None = None
    """Load only these models at start (default: every model in the repository)."""
    strict_readiness: bool = False
    """If true, /v2/health/ready is false while any model failed to load."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, time allowed to finish queued and in-flight requests."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the service loggers."""
    log_format: Literal["text", "json"] = "text"
    """`json` writes one JSON object per line (for log shippers)."""
    access_log: bool = False
    """Log one line per HTTP request (uvicorn's access log)."""
    metrics: bool = True
    """Serve Prometheus metrics at /metrics."""

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if not p.endswith("ExecutionProvider")]
        if unknown:
            raise ValueError(
                f"DEEPSERVE_PROVIDERS has {unknown}: names look like {', '.join(KNOWN_PROVIDERS)}"
            )
        return value
