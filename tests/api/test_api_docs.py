"""``GET /docs`` works with no internet: the page names only assets the API serves itself."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import ApiServer

# Every URL a docs page loads: script/link/img sources, Swagger UI's `url: '...'`, ReDoc's spec-url.
ASSET = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(api_server: ApiServer, page: str) -> None:
    with api_server.client(token=None) as browser:
        html = browser.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assets = [a or b for a, b in ASSET.findall(html.text)]
        assert assets, html.text
        assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets  # no CDN, no other host
        assert "cdn." not in html.text and "https://" not in html.text

        for asset in assets:
            r = browser.get(asset)
            assert r.status_code == 200, (asset, r.status_code)
            if asset.endswith(".js"):
                assert "javascript" in r.headers["content-type"] and len(r.content) > 100_000, asset
        assert any(a.endswith("/openapi.json") for a in assets)
