"""Routes for people with a browser: the try-it page (`/`, `/ui`, `/ui/static/...`) and the API docs.

The page is static (plain HTML, JS and CSS in `service/ui/static`, no build step): it reads
`GET /v1/models`, `GET /v2/models/{name}` and `/openapi.json` and builds each model's card from its
task type, so a model needs no code of its own. `/docs` (Swagger UI) and `/redoc` load their scripts
from the `fastapi-offline` package's copy of swagger-ui-dist and ReDoc instead of FastAPI's default CDN,
so they render on air-gapped machines and in containers without outbound access.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from service.settings import Settings

STATIC = Path(str(files("service.ui") / "static"))
"""The page's own files."""
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png, as fastapi-offline
ships them."""
ASSETS_URL = "/ui/assets"
STATIC_URL = "/ui/static"
NO_CACHE = {"Cache-Control": "no-cache"}
"""The page is revalidated on each load (ETag), so an upgraded server never runs a stale script."""


def install(app: FastAPI, settings: Settings) -> None:
    """Add the docs (always) and the page (if `settings.ui`) to `app`, built with docs_url=None."""
    _install_docs(app)
    if not settings.ui:

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/docs")

        return
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_index(), headers=NO_CACHE)


@cache
def _index() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def _install_docs(app: FastAPI) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response((DOCS_ASSETS / "favicon.png").read_bytes(), media_type="image/png")
