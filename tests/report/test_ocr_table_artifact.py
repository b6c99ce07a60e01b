"""The OCR task's table artifact: the Prefect UI renders table cells as markdown, so a document's
name (the user's text) must come out as text, and its stored markdown as a link a browser opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow
from prefect.context import FlowRunContext

from clients.settings import Settings, get_settings
from clients.storage import join_uri
from tasks.ocr import ocr_documents
from tests.ocr.conftest import text_pdf
from tests.report.markup import assert_inert, rendered
from tests.report.run_page import run_artifacts

HOSTILE_NAME = "<img src=x onerror=alert(1)> [x](javascript:alert(2)) # scan.pdf"


def test_the_ocr_table_shows_a_hostile_document_name_as_text(
    prefect_api: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKFLOWS_API__PUBLIC_URL", "http://api.example.test:8080")
    monkeypatch.setenv("STACKFLOWS_API__TOKEN", "test-token-for-signing")
    get_settings.cache_clear()
    document = Path(settings.data_dir) / "docs" / HOSTILE_NAME
    document.parent.mkdir(parents=True)
    document.write_bytes(text_pdf(["Monocytes were sorted by CD14."]))

    @flow(name="ocr-table-test")
    def read() -> str:
        run_id = FlowRunContext.get().flow_run.id
        ocr_documents([str(document)], join_uri(get_settings().storage_root, "runs", str(run_id), "documents"))
        return str(run_id)

    run_id = read()
    table = run_artifacts(run_id)["ocr-documents"]
    [row] = json.loads(table.data)

    for page in rendered(row["document"]):
        assert page.tags() <= {"p"} and page.text.strip() == str(document)
    for page in rendered(row["markdown"]):
        assert_inert(page)
        [link] = page.hrefs()
        assert link.startswith(f"http://api.example.test:8080/runs/{run_id}/files/documents/")
