"""OCR test fixtures: documents the tests make, loopback fakes of the service and Google's identity.

Every test here runs with google-auth's metadata addresses pointed at loopback, so nothing ever
probes the real metadata server (169.254.169.254 / metadata.google.internal).
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pypdfium2 as pdfium
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.compute_engine import _metadata
from matplotlib.backends.backend_pdf import PdfPages
from PIL import Image, ImageOps

from clients.ocr import OcrSettings
from tests.fake_google_identity import FakeGoogleIdentity
from tests.fake_openai_ocr import marked_page


def scanned_pdf(pages: int) -> bytes:
    """A PDF of page images only (no text layer), each page carrying the fake's page marker."""
    images = [marked_page(n) for n in range(1, pages + 1)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", save_all=True, append_images=images[1:], resolution=100)
    return buffer.getvalue()


def text_pdf(lines: list[str]) -> bytes:
    """A PDF with a real text layer: one page per line, set in a standard PDF font."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"pdf.use14corefonts": True}), PdfPages(buffer) as pdf:
        for line in lines:
            fig = plt.figure(figsize=(8.5, 11))
            fig.text(0.08, 0.9, line, fontsize=11)
            pdf.savefig(fig)
            plt.close(fig)
    return buffer.getvalue()


def joined_pdf(*parts: bytes) -> bytes:
    """The pages of several PDFs, in order, as one PDF."""
    out = pdfium.PdfDocument.new()
    for part in parts:
        out.import_pages(pdfium.PdfDocument(part))
    buffer = io.BytesIO()
    out.save(buffer)
    return buffer.getvalue()


def typed_page(lines: list[str], dpi: int = 150) -> Image.Image:
    """A letter page of typed lines (DejaVu Sans, 12 pt) as a scanner at ``dpi`` sees it: greyscale pixels."""
    fig = plt.figure(figsize=(8.5, 11), dpi=dpi)
    for row, line in enumerate(lines):
        fig.text(0.08, 0.9 - 0.04 * row, line, fontsize=12, family="DejaVu Sans")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return Image.open(buffer).convert("L")


def blank_page(size: tuple[int, int] = (1275, 1650)) -> Image.Image:
    """An empty scanned sheet (letter at 150 DPI)."""
    return Image.new("L", size, 255)


def ink_on_transparent(page: Image.Image) -> Image.Image:
    """The page as black ink on a transparent background, as background-removal and export tools write it."""
    ink = Image.new("RGBA", page.size, (0, 0, 0, 0))
    ink.putalpha(ImageOps.invert(page.convert("L")))
    return ink


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_only_pdf(*pages: Image.Image, dpi: int = 150) -> bytes:
    """A PDF whose pages are images only: no text layer, as a scanner writes it."""
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=list(pages[1:]), resolution=dpi)
    return buffer.getvalue()


def words_found(expected_lines: list[str], text: str) -> float:
    """Share of the expected words (case-insensitive) that appear in ``text``: tolerant of OCR noise."""
    def words(s: str) -> set[str]:
        return {w.lower() for w in re.findall(r"[A-Za-z]{2,}", s)}

    expected = words(" ".join(expected_lines))
    return len(expected & words(text)) / len(expected)


SCAN_LINES = [
    "Peripheral blood mononuclear cells were thawed and washed twice.",
    "Stimulate with interferon beta for six hours before library preparation.",
    "Monocytes induced ISG15 and MX1 more strongly than T cells.",
]

PROTOCOL_LINES = [
    "Protocol page 1: thaw PBMCs at 37 C, wash twice in PBS with 2% FBS, count viable cells.",
    "Protocol page 2: stimulate with IFN-beta for 6 hours before 10x Genomics library preparation.",
]


class _NoMetadataHere(BaseHTTPRequestHandler):
    """Answers like an ordinary web server, so google-auth's metadata ping fails at once."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def no_metadata_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoMetadataHere)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def point_metadata_at(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    # GCE_METADATA_IP is read per call (the ping); the host is read at import, so patch the module.
    monkeypatch.setenv("GCE_METADATA_IP", host)
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", host)


@pytest.fixture(autouse=True)
def _never_the_real_metadata_server(monkeypatch: pytest.MonkeyPatch, no_metadata_host: str) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    point_metadata_at(monkeypatch, no_metadata_host)
    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None  # AF_UNIX paths pass
        if host is not None and host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"an OCR test tried to reach {address}; tests talk to 127.0.0.1 only")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def identity() -> Iterator[FakeGoogleIdentity]:
    with FakeGoogleIdentity() as fake:
        yield fake


@pytest.fixture
def metadata_identity(identity: FakeGoogleIdentity, monkeypatch: pytest.MonkeyPatch) -> FakeGoogleIdentity:
    """As on Cloud Run: ID tokens come from the (fake) metadata server."""
    point_metadata_at(monkeypatch, identity.host)
    return identity


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def service_account_key(identity: FakeGoogleIdentity, private_key_pem: str, tmp_path: Path) -> Path:
    """A service-account key file whose token_uri is the fake identity (never Google's)."""
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "stackflows-test",
                "private_key_id": "test-key",
                "private_key": private_key_pem,
                "client_email": "key-file-caller@stackflows-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": identity.token_uri,
            }
        )
    )
    return path


def service_settings(url: str, **overrides: object) -> OcrSettings:
    """Settings for the fake service: quick backoff so retry tests stay fast."""
    values: dict[str, object] = {"service_url": url, "concurrency": 4, "backoff_s": 0.05, "max_retries": 3}
    values.update(overrides)
    return OcrSettings(**values)
