"""An HTTP session for a Cloud Run service: Google ID token auth plus retries that suit scale-from-zero.

Why these pieces:
- ``fetch_id_token_credentials(audience)`` is called once; ``AuthorizedSession`` then refreshes the
  token shortly before it expires (in the background while the old one still works) and once more
  on a 401. ``fetch_id_token`` would fetch a fresh token for every request.
- urllib3's ``Retry`` retries 429/502/503/504 and connection errors with exponential backoff and
  honours ``Retry-After``, which is how Cloud Run answers while an instance starts. It never resends
  a page whose answer timed out: that would wait the (long, cold-start) read timeout again, and
  once retries ran out requests would report the timeout as "could not connect".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token
import requests
from google.auth.credentials import Credentials
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from clients.ocr.base import OcrError
from clients.ocr.settings import OcrSettings

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 502, 503, 504)


def audience_of(service_url: str) -> str:
    """Cloud Run checks the token's audience against the service URL: scheme and host, no path."""
    parts = urlsplit(service_url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class ServiceSession:
    """The session to send pages with, and who it authenticates as (for error messages)."""

    session: requests.Session
    identity: str | None  # service account e-mail or credential type; None: no token is sent
    no_token_reason: str | None = None  # why no token is sent, when identity is None


class NoReadTimeoutRetry(Retry):
    """urllib3's Retry, except that a read timeout is raised at once (requests then says ReadTimeout).

    A read timeout means the service took the page and has not answered within the read timeout: a
    second send waits as long again. Other read errors (a connection dropped mid-answer, as when an
    instance goes away) are still retried.
    """

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # type: ignore[no-untyped-def]
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _retrying_adapter(settings: OcrSettings) -> HTTPAdapter:
    retry = NoReadTimeoutRetry(
        total=settings.max_retries,
        connect=settings.max_retries,
        read=min(2, settings.max_retries),  # a dropped answer; read timeouts are never retried (above)
        status=settings.max_retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # OCR of a page is idempotent, so POST may be retried
        backoff_factor=settings.backoff_s,
        backoff_max=settings.backoff_max_s,
        backoff_jitter=settings.backoff_s / 2,
        respect_retry_after_header=True,
        raise_on_status=False,  # hand back the last answer so the error can quote it
    )
    return HTTPAdapter(
        max_retries=retry, pool_connections=1, pool_maxsize=settings.concurrency, pool_block=True
    )


def _describe(credentials: Credentials) -> str:
    email = getattr(credentials, "service_account_email", None)
    return email if isinstance(email, str) and email != "default" else type(credentials).__name__


def open_service_session(settings: OcrSettings, credentials: Credentials | None = None) -> ServiceSession:
    """A session for ``settings.service_url``; fetches the first ID token now so auth problems show before any page.

    ``credentials``: ID token credentials to use instead of the environment's (tests, custom set-ups).
    """
    assert settings.service_url is not None
    audience = audience_of(settings.service_url)
    no_token_reason = None
    if credentials is None and settings.id_token:
        token_request = google.auth.transport.requests.Request()
        try:
            credentials = google.oauth2.id_token.fetch_id_token_credentials(audience, request=token_request)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            no_token_reason = f"no Google credentials were found ({exc})"
            log.warning("OCR service %s: sending requests without an ID token: %s", audience, no_token_reason)
    elif not settings.id_token:
        no_token_reason = "STACKFLOWS_OCR__ID_TOKEN is false"

    if credentials is None:
        session = requests.Session()
        identity = None
    else:
        try:
            credentials.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.GoogleAuthError as exc:
            raise OcrError(
                f"could not get a Google ID token for {audience} as {_describe(credentials)}: {exc}. "
                "Fix: check GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or the runtime "
                "service account, then retry"
            ) from exc
        credentials.with_non_blocking_refresh()
        session = google.auth.transport.requests.AuthorizedSession(credentials)
        identity = _describe(credentials)

    adapter = _retrying_adapter(settings)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return ServiceSession(session=session, identity=identity, no_token_reason=no_token_reason)


def auth_failure_reason(status: int, service_url: str, identity: str | None, no_token_reason: str | None) -> str:
    """What a 401/403 means here and how to fix it."""
    grant = (
        f"gcloud run services add-iam-policy-binding SERVICE --member=serviceAccount:{identity or 'SA_EMAIL'} "
        "--role=roles/run.invoker"
    )
    if identity is None:
        return (
            f"the OCR service {service_url} answered {status} and no Google ID token was sent "
            f"({no_token_reason}). Fix: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file "
            f"(or run on Google Cloud with a service account) and grant that account roles/run.invoker "
            f"on the service ({grant})"
        )
    if status == 401:
        return (
            f"the OCR service {service_url} rejected the ID token of {identity} (401). Fix: make sure "
            f"STACKFLOWS_OCR__SERVICE_URL is the service's own URL (it is the token's audience) and that "
            f"the account may invoke it ({grant})"
        )
    return (
        f"{identity} may not invoke the OCR service {service_url} (403). Fix: grant it roles/run.invoker "
        f"({grant})"
    )
