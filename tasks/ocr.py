"""Read the run's documents (protocols, papers, lab notes) into markdown for the agent.

Each page read by an OCR engine is kept in Prefect's result store under a key made of the
document's content hash, the page index and the engine's settings, as soon as it is read. A retried
or re-run flow therefore sends only the pages it does not have yet (results must live where every
worker can read them: a GcsBucket block as default result storage on Cloud Run). Each document's
markdown is written create-only beside the run's outputs.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.results import ResultStore, get_result_store

from clients.ocr.models import NO_TEXT_FOUND, DocumentText, PageText, document_name
from clients.output_links import output_url
from clients.settings import get_settings
from clients.storage import ObjectExistsError, ObjectNotFoundError, join_uri, store_for
from tasks.report_text import md_inline, md_output


class ResultStorePageCache:
    """``PageCache`` on Prefect's result store; also moves the run's progress bar as pages finish."""

    def __init__(self, store: ResultStore, total_pages: int) -> None:
        self._store = store
        self._total = max(total_pages, 1)
        self._done = 0
        self._progress_id = create_progress_artifact(0.0, description="OCR: pages read")
        self._last_update = 0.0

    def get(self, key: str) -> PageText | None:
        if not self._store.exists(key):
            return None
        page = self._store.read(key).result
        return page if isinstance(page, PageText) else None

    def put(self, key: str, page: PageText) -> None:
        self._store.write(page, key=key)
        self._done += 1
        self._tick()

    def advance(self, pages: int) -> None:
        """Pages that needed no engine call (text layer or cache) count towards progress too."""
        self._done += pages
        self._tick(force=True)

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_update >= 1.0:  # one API call a second at most
            self._last_update = now
            update_progress_artifact(self._progress_id, min(100.0, 100.0 * self._done / self._total))


def _markdown_uri(output_prefix_uri: str, index: int, uri: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", document_name(uri).rsplit(".", 1)[0])[:80] or "document"
    return join_uri(output_prefix_uri, "documents", f"{index + 1:02d}-{stem}.md")


def _write_once(uri: str, data: bytes) -> str:
    """Write create-only; an identical object already there is reused, a different one is kept and
    this version goes beside it (a retry never clobbers what an earlier attempt wrote)."""
    store = store_for(uri)
    candidates = [uri, uri.removesuffix(".md") + f".{_short_hash(data)}.md"]
    for candidate in candidates:
        try:
            return store.put_bytes_once(data, candidate)
        except ObjectExistsError:
            continue  # different bytes there: try the next name
    raise ObjectExistsError(f"{uri}: different markdown is already there twice; use a new output prefix")


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the task only when the service was busy or unreachable, not for bad input or a page that fails."""
    from clients.ocr import OcrPageError

    try:
        state.result()
    except OcrPageError as exc:
        return exc.retryable
    except Exception:
        return False
    return False


@task(
    name="ocr-documents",
    persist_result=True,
    retries=1,
    retry_delay_seconds=60,
    retry_condition_fn=_retry_unless_permanent,
)
def ocr_documents(document_uris: list[str], output_prefix_uri: str) -> list[DocumentText]:
    """Each document's pages as text, in page order, with the engine that read each page.

    All documents are opened and checked (type, damage, page limit) before any page is sent.
    """
    from clients.ocr import DocumentReader  # here: pypdfium2, PIL and google-auth load only for documents

    logger = get_run_logger()
    settings = get_settings().ocr
    reader = DocumentReader(settings)

    sources: list[tuple[str, bytes]] = []
    for uri in document_uris:
        try:
            sources.append((uri, store_for(uri).get_bytes(uri)))
        except ObjectNotFoundError as exc:
            raise FileNotFoundError(f"{uri}: document not found; check the URI in the request's documents") from exc
    page_counts = [reader.check(data, uri) for uri, data in sources]
    logger.info("OCR: %d document(s), %d page(s)", len(sources), sum(page_counts))

    cache = ResultStorePageCache(get_result_store(), sum(page_counts))
    results: list[DocumentText] = []
    for index, (uri, data) in enumerate(sources):
        document = reader.read(data, uri, cache=cache)
        cache.advance(len(document.pages) - _pages_sent(document))
        markdown_uri = _write_once(_markdown_uri(output_prefix_uri, index, uri), document.markdown().encode())
        document = document.model_copy(update={"markdown_uri": markdown_uri})
        logger.info("%s: %s; markdown at %s", uri, document.engines, markdown_uri)
        if document.pages_without_text:
            logger.warning("%s", _no_text_warning(document))
        results.append(document)

    create_table_artifact(
        key="ocr-documents",
        table=[
            {
                "document": md_inline(doc.uri),  # the UI renders cells as markdown; a URI is the user's text
                "pages": len(doc.pages),
                **{engine: doc.engines.get(engine, 0) for engine in ("text-layer", "lightonocr", "rapidocr")},
                "from earlier attempts": doc.pages_from_cache,
                "pages without text": ", ".join(map(str, doc.pages_without_text)) or "none",
                "markdown": md_output(doc.markdown_uri, output_url(doc.markdown_uri)) if doc.markdown_uri else "-",
            }
            for doc in results
        ],
        description="Which engine read how many pages of each document.",
    )
    return results


def _no_text_warning(document: DocumentText) -> str:
    """Names the pages OCR found nothing on, so an unread page is never mistaken for an empty one."""
    pages = ", ".join(map(str, document.pages_without_text))
    engines = ", ".join(sorted({p.engine for p in document.pages if not p.text.strip()}))
    return (
        f"{document.uri}: no text found on page(s) {pages} (read by {engines}); the agent sees them marked "
        f'"{NO_TEXT_FOUND}". If they are not blank, scan them larger or darker, or set '
        "STACKFLOWS_OCR__SERVICE_URL to read them with LightOnOCR"
    )


def _pages_sent(document: DocumentText) -> int:
    """Pages an engine read in this attempt (each already counted when it was cached)."""
    return sum(1 for page in document.pages if page.engine != "text-layer") - document.pages_from_cache
