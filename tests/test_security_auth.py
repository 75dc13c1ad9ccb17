"""Access control over real HTTP: every route of the app, with and without credentials.

The routes are read from the app itself, so a route added later is tested too (and is protected unless
it is deliberately listed as open in service.security).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from conftest import AppClient, serve_app
from onnx_models import classifier_model, classifier_weights, write_model
from task_models import write_text_model

from service.api.fastpath import InferEntrance
from service.app import create_app
from service.settings import Settings

KEY = "k3y-" + "a" * 28
OTHER_KEY = "k3y-" + "b" * 28
ADMIN = "adm-" + "c" * 28
CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}]}
OPEN = {"/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/docs", "/redoc",
        "/docs/oauth2-redirect", "/favicon.ico", "/ui", "/ui/assets", "/ui/static"}
"""Pages and probes that stay open; the API calls the UI and docs pages make need a key like any client."""


@pytest.fixture
def models(repo: Path) -> Path:
    write_model(repo, "clf", classifier_model())
    write_text_model(repo, "sentiment")
    return repo


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def concrete_routes(repo: Path, **settings: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, path parameters filled with real values."""
    app = create_app(Settings(model_repository=repo, **settings))
    declared = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    for route in app.routes:  # the top-level ones the schema leaves out (docs pages, redirects)
        path = getattr(route, "path", None)
        if path is not None:
            declared |= {(method, path) for method in getattr(route, "methods", None) or {"GET"}}
    found = set()
    for method, path in declared:
        path = re.sub(r"\{[^}]+\}", "x", path.replace("{name}", "clf").replace("{version}", "1"))
        if method != "HEAD":
            found.add((method, path))
    return sorted(found)


def assert_unauthorized(response: httpx.Response, *, invalid: bool) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "unauthorized" and "Authorization: Bearer" in body["error"], body
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="deepserve"')
    assert ('error="invalid_token"' in challenge) is invalid
    assert response.headers.get("x-request-id")


async def test_every_route_needs_a_key_except_probes_metrics_and_docs(models: Path) -> None:
    routes = concrete_routes(models, api_keys=[KEY], admin_token=ADMIN, **CPU)
    assert ("POST", "/v2/models/clf/infer") in routes and ("POST", "/v1/models/clf/predict") in routes
    async with serve_app(models, api_keys=[KEY], admin_token=ADMIN, **CPU) as client:
        for method, path in routes:
            bare = await client.request(method, path)
            if path in OPEN:
                assert bare.status_code not in (401, 403), (method, path, bare.text)
                continue
            assert_unauthorized(bare, invalid=False)
            wrong = await client.request(method, path, headers=bearer(OTHER_KEY))
            assert_unauthorized(wrong, invalid=True)
            token = ADMIN if path.startswith("/v2/repository") else KEY
            allowed = await client.request(method, path, headers=bearer(token))
            assert allowed.status_code not in (401, 403), (method, path, allowed.text)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi-route"])
async def test_infer_answers_only_with_a_key_through_either_entrance(models: Path, fast_path: bool) -> None:
    w, b = classifier_weights()
    async with serve_app(models, api_keys=[KEY, OTHER_KEY], infer_fast_path=fast_path, **CPU) as client:
        for path in ("/v2/models/clf/infer", "/v2/models/clf/versions/1/infer"):
            assert_unauthorized(await client.post(path, json=BODY), invalid=False)
            assert_unauthorized(await client.post(path, json=BODY, headers={"Authorization": "Basic " + KEY}),
                                invalid=False)
            assert_unauthorized(await client.post(path, json=BODY, headers=bearer(KEY + "x")), invalid=True)
            assert_unauthorized(await client.post(path, json=BODY, headers=bearer(KEY[:-1])), invalid=True)
            for key in (KEY, OTHER_KEY):
                ok = await client.post(path, json=BODY, headers=bearer(key))
                assert ok.status_code == 200, ok.text
                got = np.array(ok.json()["outputs"][0]["data"]).reshape(2, 3)
                np.testing.assert_allclose(got, X @ w + b, atol=1e-5)


async def test_credentials_are_checked_before_the_body_is_read(models: Path) -> None:
    async with serve_app(models, api_keys=[KEY], max_request_bytes=1024, **CPU) as client:
        huge = b"{" * 4096  # over the body limit: without a key the answer is 401, not 413 (nothing read)
        response = await client.post("/v2/models/clf/infer", content=huge)
        assert_unauthorized(response, invalid=False)
        response = await client.post("/v2/models/clf/infer", content=huge, headers=bearer(KEY))
        assert response.status_code == 413


def test_access_control_wraps_the_fast_path_and_the_routes(models: Path) -> None:
    """Both entrances of v2 infer (the fast path's chain and FastAPI's stack) lie inside AccessControl,
    which lies outside BodyLimit (credentials are checked before a body is read)."""
    app = create_app(Settings(model_repository=models, api_keys=[KEY], **CPU))
    entrance = app.build_middleware_stack()
    assert isinstance(entrance, InferEntrance)
    for stack in (entrance.infer, entrance.app):
        layers = []
        layer: Any = stack
        while layer is not None:
            layers.append(type(layer).__name__)
            layer = getattr(layer, "app", None)
        assert layers.index("AccessControl") < layers.index("BodyLimit"), layers
    order = [m.cls.__name__ for m in app.user_middleware]  # type: ignore[attr-defined]  # outermost first
    assert order.index("RequestContext") < order.index("AccessControl") < order.index("BodyLimit")


async def test_repository_api_needs_the_admin_token(models: Path) -> None:
    async with serve_app(models, api_keys=[KEY], admin_token=ADMIN, **CPU) as client:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/clf/load",
            "/v2/repository/models/clf/unload",
        ):
            assert_unauthorized(await client.post(path), invalid=False)
            # a key is not admin
            assert_unauthorized(await client.post(path, headers=bearer(KEY)), invalid=True)
        assert (
            await client.post("/v2/models/clf/infer", json=BODY, headers=bearer(ADMIN))
        ).status_code == 200
        assert (
            await client.post("/v2/repository/models/clf/unload", headers=bearer(ADMIN))
        ).status_code == 200
        gone = await client.post("/v2/models/clf/infer", json=BODY, headers=bearer(KEY))
        assert gone.status_code == 404, gone.text
        assert (await client.post("/v2/repository/models/clf/load", headers=bearer(ADMIN))).status_code == 200
        assert (await client.post("/v2/models/clf/infer", json=BODY, headers=bearer(KEY))).status_code == 200


async def test_admin_token_alone_locks_only_the_repository_api(models: Path) -> None:
    async with serve_app(models, admin_token=ADMIN, **CPU) as client:
        assert_unauthorized(await client.post("/v2/repository/models/clf/unload"), invalid=False)
        assert (await client.post("/v2/models/clf/infer", json=BODY)).status_code == 200
        assert (await client.post("/v2/repository/index", headers=bearer(ADMIN))).status_code == 200


async def test_api_keys_without_admin_token_close_the_repository_api(models: Path) -> None:
    async with serve_app(models, api_keys=[KEY], **CPU) as client:
        for headers in ({}, bearer(KEY)):
            response = await client.post("/v2/repository/models/clf/unload", headers=headers)
            assert response.status_code == 403 and response.json()["code"] == "forbidden", response.text
            assert "DEEPSERVE_ADMIN_TOKEN" in response.json()["error"]
        assert (await client.post("/v2/models/clf/infer", json=BODY, headers=bearer(KEY))).status_code == 200


async def test_admin_api_off_removes_the_repository_routes(models: Path, app_client: AppClient) -> None:
    async with app_client(admin_api=False, admin_token=ADMIN, **CPU) as client:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/clf/load",
            "/v2/repository/models/clf/unload",
        ):
            response = await client.post(path, headers=bearer(ADMIN))
            assert response.status_code == 404, response.text
        schema = (await client.get("/openapi.json")).json()
        assert not [p for p in schema["paths"] if p.startswith("/v2/repository")]
        assert (await client.post("/v2/models/clf/infer", json=BODY)).status_code == 200


async def test_everything_is_open_by_default(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        assert (await client.post("/v2/models/clf/infer", json=BODY)).status_code == 200
        assert (await client.post("/v2/repository/index")).status_code == 200
        assert (await client.post("/v1/models/sentiment/predict", json={"text": "good"})).status_code == 200


async def test_keys_file(models: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team a\n{KEY}\n\n  {OTHER_KEY}  \n", encoding="utf-8")
    async with serve_app(models, api_keys_file=keys, **CPU) as client:
        assert_unauthorized(
            await client.post("/v1/models/sentiment/predict", json={"text": "good"}), invalid=False
        )
        for key in (KEY, OTHER_KEY):
            ok = await client.post("/v1/models/sentiment/predict", json={"text": "good"}, headers=bearer(key))
            assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("content", ["", "# only a comment\n", "short\n"])
def test_bad_keys_file_stops_the_start(models: Path, tmp_path: Path, content: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="DEEPSERVE_API_KEYS_FILE"):
        create_app(Settings(model_repository=models, api_keys_file=keys))


@pytest.mark.parametrize("field", ["admin_token", "api_keys"])
def test_short_secrets_are_refused_at_start(models: Path, field: str) -> None:
    value: Any = "tooshort" if field == "admin_token" else ["tooshort"]
    with pytest.raises(ValueError, match=f"DEEPSERVE_{field.upper()}"):
        Settings(model_repository=models, **{field: value})


async def test_repository_api_stays_locked_under_a_root_path_and_odd_spellings(models: Path) -> None:
    app = create_app(Settings(model_repository=models, admin_token=ADMIN, **CPU))
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app, root_path="/api")  # mounted under /api by a proxy
        async with httpx.AsyncClient(transport=transport, base_url="http://deepserve") as client:
            for path in ("/api/v2/repository/models/clf/unload", "/api//v2/repository/models/clf/unload",
                         "/api/v2/repository/models/clf/unload/"):
                response = await client.post(path)
                assert_unauthorized(response, invalid=False)
            # still served
            assert (await client.post("/api/v2/models/clf/infer", json=BODY)).status_code == 200
            ok = await client.post("/api/v2/repository/models/clf/unload", headers=bearer(ADMIN))
            assert ok.status_code == 200, ok.text


async def test_openapi_says_which_operations_need_a_token(models: Path) -> None:
    async with serve_app(models, api_keys=[KEY], admin_token=ADMIN, **CPU) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "ErrorResponse" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            needs = "security" in operation
            assert needs == (path not in OPEN), (method, path)
            assert ("401" in operation["responses"]) == needs


async def test_openapi_is_unchanged_without_credentials(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        schema = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in schema.get("components", {})
    assert not [op for ops in schema["paths"].values() for op in ops.values() if "security" in op]
