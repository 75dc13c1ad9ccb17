"""Shared fixtures: a tmp model repository and the real app behind real HTTP (httpx + ASGI)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

sys.path.insert(0, str(Path(__file__).parent))  # tests/onnx_models.py, tests/server.py

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty model repository folder; tests fill it with `onnx_models.write_model`."""
    path = tmp_path / "repo"
    path.mkdir()
    return path


@asynccontextmanager
async def serve_app(repository: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on `repository`, lifespan entered, behind an httpx client speaking ASGI."""
    settings = Settings(model_repository=repository, **overrides)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deepserve", timeout=60) as client:
            yield client


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One quick build of every default family (seed 0) into a fresh repository.

    Returns (repository, FamilyResult by name).

    Shared by tests/test_demo_e2e.py and tests/test_browser.py so the session pays for it once (about 30 s
    on 2 idle cores with espeak-ng's output cached). A family whose programs are missing is left out.
    """
    torch = pytest.importorskip("torch")
    import shutil

    from models.recipes import load_recipes
    from models.recipes.base import BuildOptions

    torch.set_num_threads(1)  # the CI machine has 2 shared cores
    out = tmp_path_factory.mktemp("demo-repo")
    recipes = load_recipes()
    built = {}
    for name, recipe in recipes.items():
        if not getattr(recipe, "in_default_build", True):
            continue  # opt-in families (minilm) are not part of the demo, as in `deepserve-train build`
        if all(shutil.which(p) for p in DEMO_NEEDS.get(name, ())):
            built[name] = recipe.build(BuildOptions(out=out, quick=True, progress=False))
    return out, built


DEMO_NEEDS = {"speech": ("espeak-ng", "flite")}
"""Programs a demo family's build needs; without them it is left out of the `demo` build."""


@pytest.fixture
def app_client(repo: Path) -> AppClient:
    """`async with app_client(**settings) as client:` serves the `repo` fixture's models."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return serve_app(repo, **overrides)

    return factory
