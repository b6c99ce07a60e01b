"""LightOnOCR-2-1B on a vLLM OpenAI-compatible server (Cloud Run GPU): one page image per request.

Usage::

    from clients.ocr import LightOnOcrClient
    client = LightOnOcrClient(get_settings().ocr)        # STACKFLOWS_OCR__SERVICE_URL must be set
    pages = client.read_pages(page_images)               # markdown per page, in page order

Pages are sent from a thread pool, ``concurrency`` at a time, while the caller's thread renders the
next ones (pdfium is single-threaded). The GPU batches what is in flight, so throughput grows with
concurrency until the service is saturated.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import requests
from google.auth.credentials import Credentials

from clients.ocr.auth import RETRY_STATUSES, ServiceSession, auth_failure_reason, open_service_session
from clients.ocr.base import OcrEngine, OcrPageError, PageCallback, PageImage
from clients.ocr.models import PageText
from clients.ocr.settings import OcrSettings

log = logging.getLogger(__name__)


def png_data_uri(page: PageImage) -> str:
    """The page as a PNG data URI (lossless: JPEG artefacts hurt small print)."""
    buffer = io.BytesIO()
    page.image.save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class LightOnOcrClient(OcrEngine):
    """Reads pages with the LightOnOCR service; see ``inference/lightonocr`` for the service itself."""

    name = "lightonocr"

    def __init__(self, settings: OcrSettings, credentials: Credentials | None = None) -> None:
        if not settings.service_url:
            raise ValueError("LightOnOcrClient needs STACKFLOWS_OCR__SERVICE_URL (the service's https URL)")
        self._settings = settings
        self._credentials = credentials
        base = settings.service_url.removesuffix("/v1")
        self._endpoint = f"{base}/v1/chat/completions"
        self._service: ServiceSession | None = None
        self._warm = False  # until one page succeeds, allow for a cold start

    def fingerprint(self) -> str:
        s = self._settings
        return (
            f"lightonocr|{s.model}|px={s.render_longest_side_px}|t={s.temperature}|p={s.top_p}|max={s.max_tokens}"
        )

    def _session(self) -> ServiceSession:
        if self._service is None:
            self._service = open_service_session(self._settings, self._credentials)
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.session.close()
            self._service = None

    def read_pages(self, pages: Iterable[PageImage], on_page: PageCallback | None = None) -> list[PageText]:
        service = self._session()  # auth problems surface here, before any page is sent
        slots = self._settings.concurrency
        order: list[int] = []
        done_pages: dict[int, PageText] = {}
        failures: list[OcrPageError] = []
        with ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="lightonocr") as pool:
            pending: dict[Future[PageText], PageImage] = {}

            def collect(block: bool) -> None:
                if not pending:
                    return
                finished, _ = wait(pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
                for future in finished:
                    pending.pop(future)
                    try:
                        page = future.result()
                    except OcrPageError as exc:
                        failures.append(exc)
                        continue
                    done_pages[page.page_number] = page
                    if on_page is not None:
                        on_page(page)

            for image in pages:  # the next page renders while every slot is busy
                while len(pending) >= slots:
                    collect(block=True)
                collect(block=False)
                if failures:
                    break  # stop feeding the service; pages in flight still finish and are kept
                order.append(image.page_number)
                pending[pool.submit(self._read_one, service, image)] = image
            while pending:
                collect(block=True)
        if failures:
            first = min(failures, key=lambda exc: exc.page_number)
            if len(failures) > 1:
                first.args = (f"{first.args[0]} ({len(failures) - 1} more page(s) failed too)",)
            raise first
        return [done_pages[number] for number in order]

    def _read_one(self, service: ServiceSession, page: PageImage) -> PageText:
        s = self._settings
        body = {
            "model": s.model,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri(page)}}]}],
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        warm = self._warm
        read_timeout = s.request_timeout_s if warm else s.cold_start_timeout_s
        try:
            response = service.session.post(self._endpoint, json=body, timeout=(s.connect_timeout_s, read_timeout))
        except requests.ReadTimeout as exc:
            raise OcrPageError(
                page.document, page.page_number, _read_timeout_reason(self._endpoint, read_timeout, warm),
                retryable=True,
            ) from exc
        except requests.ConnectTimeout as exc:
            raise OcrPageError(
                page.document, page.page_number,
                f"could not connect to {self._endpoint} within {s.connect_timeout_s:g} s, {s.max_retries} times "
                f"({exc}); check STACKFLOWS_OCR__SERVICE_URL and the network, or raise "
                "STACKFLOWS_OCR__CONNECT_TIMEOUT_S",
                retryable=True,
            ) from exc
        except requests.ConnectionError as exc:
            raise OcrPageError(
                page.document, page.page_number,
                f"could not reach {self._endpoint} after {s.max_retries} retries ({exc}); check "
                "STACKFLOWS_OCR__SERVICE_URL and that the service is deployed",
                retryable=True,
            ) from exc
        if response.status_code != 200:
            raise OcrPageError(
                page.document, page.page_number, self._failure_reason(service, response),
                retryable=response.status_code in RETRY_STATUSES,
            )
        try:
            choice = response.json()["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise OcrPageError(
                page.document, page.page_number,
                f"{self._endpoint} answered 200 without a chat completion ({response.text[:200]!r})",
            ) from exc
        if choice.get("finish_reason") == "length":
            log.warning("%s page %d: output cut at max_tokens=%d", page.document, page.page_number, s.max_tokens)
        self._warm = True
        return PageText(page_number=page.page_number, text=text or "", engine="lightonocr")

    def _failure_reason(self, service: ServiceSession, response: requests.Response) -> str:
        status = response.status_code
        if status in (401, 403):
            return auth_failure_reason(status, self._settings.service_url or "", service.identity, service.no_token_reason)
        excerpt = response.text[:300].strip()
        if status in RETRY_STATUSES:
            return (
                f"{self._endpoint} still answered {status} after {self._settings.max_retries} retries "
                f"({excerpt!r}); the service is overloaded or cannot start (GPU quota, max instances): "
                "see docs/ocr.md"
            )
        return f"{self._endpoint} answered {status} ({excerpt!r}); this page will not succeed by retrying"


def _read_timeout_reason(endpoint: str, read_timeout: float, warm: bool) -> str:
    """What a read timeout means: the service took the page and did not answer in time (sent once)."""
    if warm:
        setting, why = "STACKFLOWS_OCR__REQUEST_TIMEOUT_S", "the service is answering other pages but not this one in time"
    else:
        setting, why = (
            "STACKFLOWS_OCR__COLD_START_TIMEOUT_S",
            "no page has been answered yet, so this includes the service's cold start (GPU, image, model load)",
        )
    return (
        f"timed out after {read_timeout:g} s waiting for {endpoint} to answer ({why}); the page was sent once "
        f"and not resent. Raise {setting}, or lower STACKFLOWS_OCR__CONCURRENCY if the service is overloaded"
    )
