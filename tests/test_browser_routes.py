"""The routes a browser uses, over HTTP without a browser: the page, its files, offline /docs, the UI and
CORS settings. (tests/test_browser.py drives the same routes in Chromium.)"""

from __future__ import annotations

import re

from conftest import AppClient

CDN = re.compile(r"""(src|href)=["']?(https?:)?//""")
"""A script, stylesheet or icon loaded from another host."""


async def test_the_page_and_its_files_are_served_from_the_package(app_client: AppClient) -> None:
    async with app_client() as client:
        for path in ("/", "/ui"):
            page = await client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'src="ui/static/app.js"' in page.text and not CDN.search(page.text)
        for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
            asset = await client.get(f"/ui/static/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
            # nothing fetched from elsewhere
            assert "https://" not in asset.text and "http://" not in asset.text
        assert (await client.get("/ui/static/missing.js")).status_code == 404


async def test_docs_and_redoc_load_their_scripts_from_this_server(app_client: AppClient) -> None:
    async with app_client() as client:
        for path, scripts in [
            ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]),
            ("/redoc", ["redoc.standalone.js"]),
        ]:
            page = await client.get(path)
            assert page.status_code == 200
            assert not CDN.search(page.text), f"{path} loads something from another host"
            for script in scripts:
                assert f"/ui/assets/{script}" in page.text
                asset = await client.get(f"/ui/assets/{script}")
                assert asset.status_code == 200 and len(asset.content) > 100_000
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200
        assert (await client.get("/favicon.ico")).headers["content-type"] == "image/png"


async def test_ui_false_turns_the_page_off_and_keeps_the_docs(app_client: AppClient) -> None:
    async with app_client(ui=False) as client:
        root = await client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/docs"
        assert (await client.get("/ui")).status_code == 404
        assert (await client.get("/ui/static/app.js")).status_code == 404
        assert (await client.get("/docs")).status_code == 200


async def test_cors_is_off_by_default_and_allows_only_the_listed_origins(app_client: AppClient) -> None:
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}
    async with app_client() as client:
        answer = await client.get("/v1/models", headers={"origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in answer.headers
    async with app_client(cors_origins=["https://app.example.com"]) as client:
        answer = await client.options("/v1/models/cnn/predict", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in answer.headers["access-control-allow-methods"]
        listed = await client.get("/v1/models", headers={"origin": "https://app.example.com"})
        assert listed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "Server-Timing" in listed.headers["access-control-expose-headers"]
        missing = await client.post("/v1/models/nope/predict", headers={"origin": "https://app.example.com"})
        assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "https://app.example.com"
        fast = await client.post("/v2/models/nope/infer", json={"inputs": []},  # the infer entrance's chain
                                 headers={"origin": "https://app.example.com"})
        assert fast.status_code == 404 and fast.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "Server-Timing" in fast.headers["access-control-expose-headers"]
        other = await client.get("/v1/models", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = await client.options("/v1/models/cnn/predict", headers={**preflight, "origin": "https://evil.example"})
        assert refused.status_code == 400
