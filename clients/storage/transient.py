"""Which storage errors are worth retrying: the ones a second attempt can fix.

The Google client libraries (requests, google-api-core, google-cloud-storage: ~0.15 s) are imported
on the first question, not with this module: every flow run's staging task names this check as its
retry condition, and a run on ``file://`` storage never asks it.
"""

from __future__ import annotations

import functools

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@functools.cache
def transient_storage_errors() -> tuple[type[BaseException], ...]:
    """The exception types a retry can fix."""
    import requests
    from google.api_core import exceptions as gexc

    from clients.storage.gcs import ChecksumMismatchError

    return (
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


def is_transient_storage_error(exc: BaseException) -> bool:
    from google.cloud.storage.exceptions import InvalidResponse

    if isinstance(exc, InvalidResponse):  # the upload machinery's own error type
        return getattr(exc.response, "status_code", None) in _TRANSIENT_STATUS
    return isinstance(exc, transient_storage_errors())
