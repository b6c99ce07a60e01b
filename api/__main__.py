"""``python -m api [--host H] [--port P]``: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import os

# Without a PREFECT_API_URL the Prefect client would quietly start a temporary server of its own;
# the API must talk to the server the workers use, so fail instead.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")


def main() -> None:
    import uvicorn

    from api.app import create_app

    parser = argparse.ArgumentParser(description="stackflows HTTP API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
