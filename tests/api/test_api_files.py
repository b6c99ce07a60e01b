"""Run outputs served to a browser: signed links (or the token), the right content types, headers that
keep a report from running script, and nothing outside the run's own prefix."""

from __future__ import annotations

import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from google.cloud import storage

from api.settings import ApiSettings
from clients import output_links
from clients.output_links import output_url
from clients.settings import Settings, get_settings
from clients.storage import store_for
from deployments.processes import free_port
from tests.api.conftest import TOKEN, ApiServer, serving
from tests.fake_gcs import gcs_emulator



def _png_1x1() -> bytes:
    """The smallest real PNG: one green pixel, so a browser's naturalWidth says it loaded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00\xff\x00")) + chunk(b"IEND", b"")


PNG = _png_1x1()
HTML = b"<!doctype html><title>report</title><p>Monocytes among B cells</p>"


def write_outputs(storage_root: str, run_id: str) -> dict[str, str]:
    """A run's report files, written as the report task writes them (create-only, through the store)."""
    outputs = {
        "report/report.html": HTML,
        "report/predictions_vs_query.png": PNG,
        "report/report.md": b"# Report",
        "stack/predictions.h5ad": b"\x89HDF\r\n\x1a\n",
    }
    uris = {}
    for rel, data in outputs.items():
        uri = f"{storage_root}/runs/{run_id}/{rel}"
        store_for(uri).put_bytes(data, uri)
        uris[rel] = uri
    return uris


@pytest.fixture
def run_files(api_server: ApiServer) -> tuple[str, dict[str, str]]:
    run_id = str(uuid.uuid4())
    return run_id, write_outputs(api_server.settings.storage_root, run_id)


def anonymous(api_server: ApiServer) -> httpx.Client:
    return api_server.client(token=None)


def test_a_signed_link_opens_the_report_in_a_browser_without_a_token(
    api_server: ApiServer, run_files: tuple[str, dict[str, str]]
) -> None:
    run_id, uris = run_files
    link = output_url(uris["report/report.html"], settings=api_server.settings)
    assert link and link.startswith(f"{api_server.url}/runs/{run_id}/files/report/report.html?exp=")

    with anonymous(api_server) as browser:
        r = browser.get(link)

    assert r.status_code == 200, r.text
    assert r.content == HTML
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script runs, inline or not
    assert csp.endswith("; sandbox")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    "rel, content_type",
    [
        ("report/predictions_vs_query.png", "image/png"),
        ("report/report.md", "text/markdown; charset=utf-8"),
        ("stack/predictions.h5ad", "application/x-hdf5"),
    ],
)
def test_each_output_comes_with_its_content_type(
    api_server: ApiServer, run_files: tuple[str, dict[str, str]], rel: str, content_type: str
) -> None:
    _, uris = run_files
    with anonymous(api_server) as browser:
        r = browser.get(output_url(uris[rel], settings=api_server.settings))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == content_type
    assert r.content == store_for(uris[rel]).get_bytes(uris[rel])


def test_the_bearer_token_opens_outputs_too(api: httpx.Client, run_files: tuple[str, dict[str, str]]) -> None:
    run_id, _ = run_files
    r = api.get(f"/runs/{run_id}/files/report/predictions_vs_query.png")
    assert r.status_code == 200 and r.content == PNG


def test_no_token_and_no_signature_is_401(api_server: ApiServer, run_files: tuple[str, dict[str, str]]) -> None:
    run_id, _ = run_files
    with anonymous(api_server) as browser:
        r = browser.get(f"/runs/{run_id}/files/report/report.html")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_a_signature_opens_only_its_own_file_of_its_own_run(
    api_server: ApiServer, run_files: tuple[str, dict[str, str]]
) -> None:
    run_id, uris = run_files
    other_run = str(uuid.uuid4())
    write_outputs(api_server.settings.storage_root, other_run)
    link = urlsplit(output_url(uris["report/report.html"], settings=api_server.settings))
    with anonymous(api_server) as browser:
        assert browser.get(f"{link.path}?{link.query}").status_code == 200
        other_file = browser.get(f"/runs/{run_id}/files/stack/predictions.h5ad?{link.query}")
        other_run_same_file = browser.get(f"/runs/{other_run}/files/report/report.html?{link.query}")
        forged = browser.get(f"{link.path}?{link.query[:-4]}beef")
        not_hex = browser.get(f"{link.path}?exp=1&sig=%C3%A9t%C3%A9")
    assert other_file.status_code == 403 and "signature" in other_file.json()["detail"]
    assert other_run_same_file.status_code == 403
    assert forged.status_code == 403
    assert not_hex.status_code == 403


def test_an_expired_link_is_refused(api_server: ApiServer, run_files: tuple[str, dict[str, str]]) -> None:
    _, uris = run_files
    ttl = api_server.settings.api.output_link_ttl_s
    stale = output_url(uris["report/report.html"], settings=api_server.settings, now=time.time() - ttl - 10)
    with anonymous(api_server) as browser:
        r = browser.get(stale)
    assert r.status_code == 403 and "expired" in r.json()["detail"]


@pytest.mark.parametrize(
    "raw_path",
    [
        "report/../../../../../etc/passwd",
        "report/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2f..%2fapi-data",
        "report//report.html",
        "report%5c..%5creport.html",
    ],
)
def test_paths_out_of_the_run_are_refused(
    api: httpx.Client, run_files: tuple[str, dict[str, str]], raw_path: str
) -> None:
    run_id, _ = run_files
    # Sent as written: httpx would otherwise resolve the dot segments before sending.
    url = httpx.URL(f"{api.base_url}/runs/{run_id}/files/").copy_with(raw_path=f"/runs/{run_id}/files/{raw_path}".encode())
    r = api.get(url)
    assert r.status_code in (400, 404), r.text
    assert b"root:" not in r.content


def test_a_symlink_out_of_the_run_is_not_followed(
    api: httpx.Client, api_server: ApiServer, run_files: tuple[str, dict[str, str]]
) -> None:
    run_id, uris = run_files
    report_dir = os.path.dirname(store_for(uris["report/report.html"]).local_path(uris["report/report.html"]))
    os.symlink("/etc/passwd", os.path.join(report_dir, "passwd.txt"))
    r = api.get(f"/runs/{run_id}/files/report/passwd.txt")
    assert r.status_code == 404


def test_unknown_outputs_are_404(api: httpx.Client, run_files: tuple[str, dict[str, str]]) -> None:
    run_id, _ = run_files
    assert api.get(f"/runs/{run_id}/files/report/nothing.html").status_code == 404
    assert api.get(f"/runs/{run_id}/files/report").status_code == 404  # a directory is no output


def test_no_link_without_a_public_url_or_outside_a_run(api_server: ApiServer, run_files) -> None:
    _, uris = run_files
    quiet = api_server.settings.model_copy(update={"api": ApiSettings(token=TOKEN)})
    assert output_url(uris["report/report.html"], settings=quiet) is None
    assert output_url(f"{api_server.settings.storage_root}/inputs/abc/cells.h5ad", settings=api_server.settings) is None
    assert output_url("file:///etc/passwd", settings=api_server.settings) is None


def test_a_worker_with_only_the_link_secret_signs_links_the_api_opens(api_server: ApiServer, run_files) -> None:
    run_id, uris = run_files
    public = api_server.settings.api.public_url
    worker = api_server.settings.model_copy(update={"api": ApiSettings(public_url=public, output_link_secret="s3")})
    api_side = api_server.settings.model_copy(update={"api": ApiSettings(token=TOKEN, output_link_secret="s3")})
    query = dict(p.split("=") for p in urlsplit(output_url(uris["report/report.html"], settings=worker)).query.split("&"))
    args = (run_id, "report/report.html", int(query["exp"]), query["sig"])
    assert output_links.verify(*args, settings=api_side) is None
    # Signed with the secret, not the token: the server that holds only the token refuses it.
    assert output_links.verify(*args, settings=api_server.settings) is not None


@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="Debian's chromium is not installed")
def test_a_browser_shows_a_served_report_and_runs_none_of_its_script(api_server: ApiServer) -> None:
    from playwright.sync_api import sync_playwright

    run_id = str(uuid.uuid4())
    root = api_server.settings.storage_root
    write_outputs(root, run_id)
    plot = output_url(f"{root}/runs/{run_id}/report/predictions_vs_query.png", settings=api_server.settings)
    hostile = f"<!doctype html><h1>Report</h1><img id=plot src='{plot}'><script>document.title = 'script ran'</script>"
    uri = f"{root}/runs/{run_id}/report/hostile.html"
    store_for(uri).put_bytes(hostile.encode(), uri)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(output_url(uri, settings=api_server.settings))
            page.wait_for_load_state("load")
            assert page.text_content("h1") == "Report"
            assert page.title() != "script ran"
            assert page.eval_on_selector("#plot", "img => img.complete && img.naturalWidth") == 1  # the plot loaded
        finally:
            browser.close()


@pytest.fixture
def gcs_api(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Settings]]:
    """An API whose storage root is gs:// on the emulator; yields its URL and settings."""
    with gcs_emulator() as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        get_settings.cache_clear()
        storage.Client().create_bucket("stackflows-api-test")
        port = free_port()
        settings = Settings(
            data_dir=api_server.data_dir,
            storage={"root": "gs://stackflows-api-test/root"},
            api=ApiSettings(token=TOKEN, deployment="analysis-run/api-test", public_url=f"http://127.0.0.1:{port}"),
        )
        with serving(settings, port) as url:
            yield url, settings
    get_settings.cache_clear()


def test_gs_outputs_are_streamed_through_the_api(gcs_api: tuple[str, Settings]) -> None:
    url, settings = gcs_api
    run_id = str(uuid.uuid4())
    uris = write_outputs(settings.storage_root, run_id)
    link = output_url(uris["report/predictions_vs_query.png"], settings=settings)
    assert link and link.startswith(f"{url}/runs/{run_id}/files/report/predictions_vs_query.png?")
    with httpx.Client(timeout=30) as browser:
        r = browser.get(link)
        missing = browser.get(f"{url}/runs/{run_id}/files/report/none.png", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert (r.content, r.headers["content-type"]) == (PNG, "image/png")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert missing.status_code == 404
