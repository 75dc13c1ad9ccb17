"""Process-wide settings from environment variables (prefix `DEEPSERVE_`) and CLI flags.

Built once in `service.__main__` and passed to `create_app(settings)`; nothing else reads
`os.environ`. Per-model settings live in `service.repository.config.ModelConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider")


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess mode: the folder where each worker process writes its samples, read
whole by /metrics. It must be set before prometheus_client is first imported (`service.__main__`)."""


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
    """Server worker processes sharing the port (each loads every model and batches on its own). With
    more than one, /metrics adds up every worker's samples (prometheus_client's multiprocess mode, in
    `PROMETHEUS_MULTIPROC_DIR` or a temporary folder). The throughput setting for small models on
    several cores; see the README's benchmark."""
    http_server: Literal["uvicorn", "granian"] = "uvicorn"
    """The HTTP server: uvicorn (Python, httptools), or granian (Rust: HTTP parsing and socket I/O run
    outside the GIL, in parallel with the event loop; more requests per second under concurrency,
    slightly more latency one request at a time; see the README's benchmark)."""
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    """Execution-provider preference for models whose config names none. The provider really in
    use is read back from the session and reported per model."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Default time a request may take end to end (queue + compute) before a 504."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies get 413 before they are read."""
    request_body_timeout_s: float = Field(60.0, gt=0)
    """Time a request body may take to arrive, from its first byte read to its last; a slower (slow-drip
    or stalled) client gets 408 and its connection is closed."""
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
    ui: bool = True
    """Serve the try-it page at / and /ui (every model with an input that fits its task). False: `/`
    redirects to /docs, which is served either way."""
    cors_origins: list[str] = []
    """Origins whose pages may call the API from a browser (CORS), e.g. `["https://app.example.com"]`;
    `["*"]` allows any. Empty: no CORS headers (same-origin pages only, such as the built-in page)."""
    max_tensor_elements: int = Field(1 << 25, ge=1)
    """Most tensor elements (over all inputs) one v2 infer request may declare; more is a 413 before the
    data is converted."""
    max_inflated_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest size a gzip/deflate request body may inflate to; more is a 413 (a gzip bomb stops there)."""
    codec_workers: int = Field(1, ge=0)
    """Worker processes that decode big v2 request bodies and encode big JSON responses, so the event
    loop keeps serving other requests meanwhile; 0 does everything on the event loop."""
    codec_offload_bytes: int = Field(512 * 1024, ge=0)
    """Bodies (and estimated JSON answers) from this many bytes on go to the codec workers; smaller ones
    are handled inline (at most a few ms of event-loop time each), where a round trip to a process
    would cost more CPU than the work."""
    infer_fast_path: bool = True
    """Serve `POST /v2/.../infer` through the infer entrance in front of the app (the same code as the
    documented FastAPI route and the same middleware, without FastAPI's routing, dependencies and own
    wrappers); false serves it through the FastAPI route."""
    admin_token: SecretStr | None = None
    """Bearer token the repository API (`/v2/repository/...`: index, load, unload) requires
    (`Authorization: Bearer <token>`, compared in constant time; at least 16 characters). Unset and no
    API keys: the repository API is open (local use). Unset with API keys set: it is closed (403)."""
    admin_api: bool = True
    """Serve the repository API at all; false removes its routes (404), whatever the token."""
    api_keys: list[SecretStr] = []
    """API keys (a JSON list, each at least 16 characters) that inference, metadata and /v1 task routes
    require as `Authorization: Bearer <key>` (401 with `WWW-Authenticate` otherwise; the admin token is
    accepted too). Empty (and no keys file): those routes are open. Health, readiness, /metrics, server
    metadata and the docs stay open."""
    api_keys_file: Path | None = None
    """File of API keys, one per line (`#` comments), added to `api_keys`; read once at start."""

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if not p.endswith("ExecutionProvider")]
        if unknown:
            raise ValueError(
                f"DEEPSERVE_PROVIDERS has {unknown}: names look like {', '.join(KNOWN_PROVIDERS)}"
            )
        return value

    @field_validator("admin_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < _MIN_SECRET:
            raise ValueError(
                f"DEEPSERVE_ADMIN_TOKEN is shorter than {_MIN_SECRET} characters; {_MAKE_SECRET}"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        short = [i for i, key in enumerate(value) if len(key.get_secret_value()) < _MIN_SECRET]
        if short:
            raise ValueError(
                f"DEEPSERVE_API_KEYS item {short[0]} is shorter than {_MIN_SECRET} characters; "
                f"{_MAKE_SECRET}"
            )
        return value


_MIN_SECRET = 16
_MAKE_SECRET = "use a long random value: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
