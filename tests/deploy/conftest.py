from __future__ import annotations

import pytest

SA = "stackflows-flows@lab.iam.gserviceaccount.com"


@pytest.fixture(scope="session")
def service_account_info() -> dict:
    """Service-account credentials made here (a fresh RSA key, a loopback token_uri), so prefect-gcp's
    GcpCredentials never looks for application-default credentials or probes the metadata server."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "lab",
        "private_key_id": "test",
        "private_key": pem,
        "client_email": SA,
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }
