"""422 answers that can always be written, whatever the client sent.

FastAPI's own handler echoes each invalid value back. A JSON body may spell a lone UTF-16
surrogate (``"\\ud800"``): Python parses it into a string that cannot be encoded as UTF-8, so
the echo itself failed and the client saw a 500 with the connection dropped. Here the echo is made
printable (the surrogate written as the text ``\\ud800``) and the message says what was wrong.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

NOT_UNICODE = (
    "not valid Unicode text: it holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair) "
    "or bytes that are not UTF-8; send the text as UTF-8 JSON, with surrogate escapes only in pairs"
)


def printable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates as backslash escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


async def request_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = printable(jsonable_encoder(exc.errors()))
    for error in errors:
        if error.get("type") == "string_unicode":
            error["msg"] = NOT_UNICODE
    return JSONResponse(status_code=422, content={"detail": errors})
