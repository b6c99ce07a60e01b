"""Bearer-token check: 401 when no token is sent, 403 when the wrong one is."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="The token in STACKFLOWS_API__TOKEN.")


def check_token(request: Request, credentials: HTTPAuthorizationCredentials) -> None:
    """403 unless the token is the server's; compared in constant time so it cannot be guessed byte
    by byte from response times."""
    expected: bytes = request.app.state.token
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="invalid bearer token")


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token: send 'Authorization: Bearer <token>' (the server's STACKFLOWS_API__TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    check_token(request, credentials)
