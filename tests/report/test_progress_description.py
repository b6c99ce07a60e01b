"""The GPU job's progress artifact description: the UI renders it as markdown, and the job's
message names a context, which is the data's own text."""

from __future__ import annotations

from datetime import datetime, timezone

from clients.batch import JobState, JobStatus
from inference.contract import JobProgress
from tasks.gpu_job import progress_of
from tests.report.markup import rendered


def test_a_context_named_in_the_progress_message_is_shown_as_text() -> None:
    message = "context '<img src=x onerror=alert(1)>\\n# Forged' (1/2), step 1/2"
    status = JobStatus(
        job_id="stack-abc-a1",
        state=JobState.RUNNING,
        progress=JobProgress(
            phase="generating", chunks_done=1, chunks_total=4, message=message, updated_at=datetime.now(timezone.utc)
        ),
    )

    percent, description = progress_of(status)

    assert percent == 25.0
    for page in rendered(description):
        assert page.tags() == {"p"}
        assert page.text.strip() == f"GPU job stack-abc-a1: {JobState.RUNNING.value}, generating 1/4 chunks ({message})"
