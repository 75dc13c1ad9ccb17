"""Access control as one pure ASGI middleware, so every entrance to a route is covered the same way.

`AccessControl` wraps both the infer entrance's chain and FastAPI's router (see `service.app` and
`service.api.fastpath`), so a v2 infer request is checked once whether the fast path or a FastAPI route
ends up serving it, and before any body is read (an unauthenticated client cannot make the server read
or inflate 64 MB).

Three kinds of path:
- **open**: liveness, readiness, Prometheus metrics, server metadata and the documentation / UI pages
  (`OPEN_PATHS`, `OPEN_PREFIXES`); probes and scrapers need no secret.
- **admin**: the v2 repository extension (`/v2/repository/...`: index, load, unload). With
  `DEEPSERVE_ADMIN_TOKEN` set they need `Authorization: Bearer <admin token>`; with API keys set but no
  admin token they are closed (403); with neither they are open (the one-command quickstart).
- **everything else** (v2 model metadata, readiness and infer, /v1 task routes, explanations, any route
  added later): with `DEEPSERVE_API_KEYS` / `DEEPSERVE_API_KEYS_FILE` set, a listed key or the admin
  token as a bearer token; otherwise open. Default-deny: a new route is protected unless listed as open.

Secrets are compared in constant time (`hmac.compare_digest` over SHA-256 digests, every key compared,
no early exit), and a refusal is a 401 with `WWW-Authenticate: Bearer` and the usual error body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body
from service.settings import Settings

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({
    "/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/favicon.ico",
})
"""Paths answered without credentials: probes, scrapers, server metadata."""
OPEN_PREFIXES = ("/docs", "/redoc", "/ui", "/static")
"""Documentation and UI pages (GET/HEAD only); the API calls such pages make are protected as usual."""
ADMIN_PREFIX = "/v2/repository"
REALM = "deepserve"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digests of the admin token and the API keys (the plain secrets are not kept here)."""

    admin: bytes | None
    keys: tuple[bytes, ...]

    @property
    def enabled(self) -> bool:
        return self.admin is not None or bool(self.keys)

    def is_admin(self, token: str) -> bool:
        if self.admin is None:
            return False
        return hmac.compare_digest(_digest(token), self.admin)

    def is_key(self, token: str) -> bool:
        """True when `token` is one of the API keys; compares against every key (no early exit)."""
        given = _digest(token)
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(given, key)
        return found


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with `#` are skipped.

    Raises ValueError naming DEEPSERVE_API_KEYS_FILE when the file cannot be read or holds no key.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"DEEPSERVE_API_KEYS_FILE {path} cannot be read: {exc}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"DEEPSERVE_API_KEYS_FILE {path} has no key (one key per line, # for comments)")
    short = [i for i, key in enumerate(keys) if len(key) < MIN_SECRET_LENGTH]
    if short:
        raise ValueError(
            f"DEEPSERVE_API_KEYS_FILE {path}: key #{short[0] + 1} is shorter than {MIN_SECRET_LENGTH} "
            "characters; use long random keys (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return keys


MIN_SECRET_LENGTH = 16
"""Shortest admin token or API key accepted (the settings validators and the keys file enforce it)."""


def credentials(settings: Settings) -> Credentials:
    """The credentials the settings configure. Raises ValueError for an unreadable keys file."""
    keys = [key.get_secret_value() for key in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += read_keys_file(settings.api_keys_file)
    admin = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    return Credentials(admin=_digest(admin) if admin else None, keys=tuple(_digest(key) for key in keys))


def is_open(method: str, path: str) -> bool:
    if path in OPEN_PATHS:
        return True
    return method in ("GET", "HEAD") and any(path == p or path.startswith(p + "/") for p in OPEN_PREFIXES)


def is_admin_path(path: str) -> bool:
    """Anything naming the repository API, wherever it appears (a mount prefix, doubled slashes)."""
    path = re.sub(r"/{2,}", "/", path)
    return path.endswith(ADMIN_PREFIX) or ADMIN_PREFIX + "/" in path


def route_path(scope: Scope) -> str:
    """The path the router matches: without the app's `root_path` when the server puts it in `path`."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (absent, other scheme, empty)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class AccessControl:
    """Checks credentials before anything else reads the request; see the module docstring."""

    def __init__(self, app: ASGIApp, *, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        creds = self.credentials
        if scope["type"] != "http" or not creds.enabled:
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if is_open(scope["method"], path):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if is_admin_path(path):
            if creds.admin is None:
                await _refuse(send, 403, "the repository API is closed: API keys are set but "
                                         "DEEPSERVE_ADMIN_TOKEN is not; set an admin token to load and "
                                         "unload models", "forbidden")
                return
            allowed = token is not None and creds.is_admin(token)
            what = ("the repository API needs the admin token: "
                    "send 'Authorization: Bearer <DEEPSERVE_ADMIN_TOKEN>'")
        else:
            if not creds.keys:
                await self.app(scope, receive, send)  # only an admin token is set: inference stays open
                return
            allowed = token is not None and (creds.is_key(token) or creds.is_admin(token))
            what = ("this route needs an API key: send 'Authorization: Bearer <key>' "
                    "(a key of DEEPSERVE_API_KEYS)")
        if allowed:
            await self.app(scope, receive, send)
            return
        challenge = f'Bearer realm="{REALM}"' + ('' if token is None else ', error="invalid_token"')
        message = what if token is None else f"the bearer token is not valid; {what}"
        await _refuse(send, 401, message, "unauthorized", challenge)


def declare_in_openapi(app: FastAPI, credentials: Credentials) -> None:
    """With credentials configured, the OpenAPI document says which operations need a bearer token (so
    /docs has an Authorize button and clients know of the 401); without, it is left as it is."""
    if not credentials.enabled:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer",
                             "description": "An API key (DEEPSERVE_API_KEYS), or the admin token for "
                                            "/v2/repository"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if is_open(method.upper(), path) or not isinstance(operation, dict):
                    continue
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {})["401"] = {
                    "description": "Missing or invalid bearer token (`WWW-Authenticate: Bearer`)",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                    }}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _refuse(send: Send, status: int, message: str, code: str, challenge: str | None = None) -> None:
    body = orjson.dumps(error_body(message, code))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge is not None:
        headers.append((b"www-authenticate", challenge.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
