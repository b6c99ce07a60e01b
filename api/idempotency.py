"""Which run a ``POST /runs`` means: the rule that makes retries safe without hiding a request.

- ``Idempotency-Key`` header: the key names the run. The same key with the same request returns
  that run (a replay); with a different request it is refused (409), never answered with a run
  that does something else.
- No header: the key is derived from the request *and the identity of its inputs* (size and mtime
  of local files, generation of ``gs://`` objects), so a file fixed in place is a new request. It
  lives ``default_idempotency_window_s``: a repeat within that time of the run's creation is a replay,
  a later one starts a new run.

The window is kept with two keys, the current and the previous period's: a request finds a run
made up to one period ago under either, and creates one under the current key only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from clients.storage import local_path_of, scheme_of, store_for
from clients.storage.roots import request_uris
from tasks.request import AnalysisRequest

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "request-sha256-"


def input_identity(uri: str) -> str:
    """What changes when the object behind ``uri`` is replaced; 'absent' where this process cannot see it."""
    try:
        if scheme_of(uri) == "file":
            st = os.stat(local_path_of(uri))
            return f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
        if scheme_of(uri) == "gs":
            store = store_for(uri)
            generation = getattr(store, "generation", None)
            return f"generation={generation(uri)}" if generation else "unknown"
    except (OSError, ValueError):  # ObjectNotFoundError is an OSError
        return "absent"
    except Exception as e:  # storage unreachable: the window alone still bounds the key
        logger.warning("cannot read the identity of %s for the idempotency key: %s", uri, e)
        return "unknown"
    return ""


def request_digest(request: AnalysisRequest) -> str:
    """sha256 of the request's canonical JSON and of its inputs' identities (reads storage metadata)."""
    inputs = {uri: input_identity(uri) for _, uri in request_uris(request)}
    canonical = json.dumps({"request": request.model_dump(mode="json"), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def default_keys(digest: str, now: float, window_s: int) -> tuple[str, str]:
    """(current, previous) keys for a request: the period number is part of the key."""
    period = int(now // window_s)
    return f"{DEFAULT_KEY_PREFIX}{digest}-{period}", f"{DEFAULT_KEY_PREFIX}{digest}-{period - 1}"


def same_request(parameters: Mapping[str, Any] | None, request: AnalysisRequest) -> bool:
    """Whether a run's parameters hold this very request (compared as validated requests)."""
    stored = (parameters or {}).get("request")
    try:
        return AnalysisRequest.model_validate(stored).model_dump() == request.model_dump()
    except ValidationError:
        return False

