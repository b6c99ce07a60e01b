"""Which storage errors are worth retrying: the ones a second attempt can fix."""

from __future__ import annotations

import requests
from google.api_core import exceptions as gexc
from google.cloud.storage.exceptions import InvalidResponse

from clients.storage.gcs import ChecksumMismatchError

TRANSIENT_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,  # 429
    gexc.InternalServerError,  # 500
    gexc.BadGateway,  # 502
    gexc.ServiceUnavailable,  # 503
    gexc.GatewayTimeout,  # 504
    gexc.RetryError,  # google-api-core's Retry gave up: the cause was transient
    ConnectionError,
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ChecksumMismatchError,  # bytes damaged in transit: sending them again fixes it
)


_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient_storage_error(exc: BaseException) -> bool:
    if isinstance(exc, InvalidResponse):  # the upload machinery's own error type
        return getattr(exc.response, "status_code", None) in _TRANSIENT_STATUS
    return isinstance(exc, TRANSIENT_STORAGE_ERRORS)
