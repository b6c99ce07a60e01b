"""Checks on a request that must hold inside the flow, whoever created the run.

The stackflows API refuses a request naming data outside the allowed roots, but the Prefect UI, a
schedule and Prefect's own API create runs with nothing in between. So the flow checks again, first,
before any file is opened: a run naming ``/etc/passwd`` fails here, not in the h5ad reader.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from clients.settings import get_settings
from clients.storage.roots import SETTING, allowed_roots, refused_uris, request_uris
from tasks.request import AnalysisRequest
from tasks.validation import InputValidationError


# NO_CACHE: the check is cheap and the roots may change between tries of a run; never skip it.
@task(name="check-request-uris", cache_policy=NO_CACHE, persist_result=False)
def check_request_uris(request: AnalysisRequest) -> None:
    """Raise InputValidationError naming each request field whose URI is outside the allowed roots."""
    roots = allowed_roots(get_settings())
    refused = refused_uris(request_uris(request), roots)
    if not refused:
        return
    fields = ", ".join(f"request.{field}" for field, _ in refused)
    raise InputValidationError(
        fields,
        "; ".join(f"{field}: {reason}" for field, reason in refused),
        f"name data under {roots} (file:///absolute/path or gs://bucket/prefix), or set {SETTING} "
        "on the worker to the prefixes runs may read",
    )
