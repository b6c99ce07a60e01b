"""A throwaway PostgreSQL server for the end-to-end tests: Prefect's production database.

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it where it is missing).
The cluster lives in a temporary directory, listens on 127.0.0.1 only, trusts local connections and
is removed afterwards. PostgreSQL refuses to run as root, so under root it runs as ``postgres``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.processes import free_port, start, wait_until

DATABASE = "prefect"


def postgres_bin_dir() -> Path | None:
    """Where Debian puts the server binaries (newest version), or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start PostgreSQL with an empty ``prefect`` database; yields its asyncpg connection URL."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install -y postgresql` (Debian) provides it")
    # Not under pytest's tmp_path: its parents are private to this user, and the server runs as postgres.
    with tempfile.TemporaryDirectory(prefix="stackflows-postgres-") as tmp:
        yield from _serve(bin_dir, Path(tmp))


def _serve(bin_dir: Path, directory: Path) -> Iterator[str]:
    data, sockets, logs = directory / "pgdata", directory / "pgsock", directory / "logs"
    for path in (data, sockets, logs):
        path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for path in (directory, data, sockets, logs):
            shutil.chown(path, "postgres", "postgres")
    subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True, capture_output=True,
    )
    port = free_port()
    server = start(
        "postgres",
        _as_owner([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(sockets)]),
        dict(os.environ), logs, directory,
    )
    try:
        wait_until(lambda: _ready(bin_dir, port), 60, "PostgreSQL", watch=[server])
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE],
            check=True, capture_output=True,
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        server.stop()


def _ready(bin_dir: Path, port: int) -> bool:
    probe = bin_dir / "pg_isready"
    return subprocess.run([str(probe), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0
