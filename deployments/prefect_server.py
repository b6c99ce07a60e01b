"""``prefect server start`` for the local stack, with every SQLite write transaction begun IMMEDIATE.

Prefect's server begins its SQLite transactions DEFERRED unless a caller asks for a row lock. Some
writes read first: creating a subflow's tracking task run reads the parent flow run's labels, then
inserts. When another connection commits between that read and the insert (the server's own event
recorders do, several times a second), SQLite cannot upgrade the stale read to a write and answers
"database is locked" at once, without waiting out its busy timeout. The server turns that into a 503
with no ``Retry-After`` and Prefect's client sleeps its first backoff, about 2 s, before it retries:
a 2-2.6 s stall in 3 of 5 local analysis runs (benchmarks/README.md, "Orchestration";
PrefectHQ/prefect#18934). Begun IMMEDIATE, a write transaction takes SQLite's one write lock before
it reads and waits its turn through the busy timeout instead. Prefect's own comment in
``setup_sqlite`` names the same cure.

The configuration goes in through Prefect's database dependency slot (``MODELS_DEPENDENCIES``,
what ``temporary_database_config`` sets), before the CLI starts the server in this process.
PostgreSQL, production's database, has no such race and is left as it is.

    python -m deployments.prefect_server --host 127.0.0.1 --port 4200   # prefect server start's options
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.server.database.dependencies import MODELS_DEPENDENCIES
from prefect.server.utilities.database import get_dialect
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction


class ImmediateWritesSqlite(AioSqliteConfiguration):
    """Prefect's SQLite configuration whose write transactions take the write lock before they read."""

    @asynccontextmanager
    async def begin_transaction(
        self, session: AsyncSession, with_for_update: bool = False
    ) -> AsyncGenerator[AsyncSessionTransaction, None]:
        async with super().begin_transaction(session, with_for_update=True) as transaction:
            yield transaction


def use_immediate_sqlite_writes() -> bool:
    """Makes this process's Prefect server use ``ImmediateWritesSqlite`` when its database is SQLite.

    Returns whether it did (False on PostgreSQL). Call it before the server's first database access.
    """
    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name != "sqlite":
        return False
    if MODELS_DEPENDENCIES["database_config"] is not None:
        raise RuntimeError("Prefect's database configuration was chosen before the SQLite writes could be set")
    MODELS_DEPENDENCIES["database_config"] = ImmediateWritesSqlite(connection_url=url)
    return True


def main() -> None:
    from prefect.cli import app

    use_immediate_sqlite_writes()
    # Prefect's CLI reads sys.argv; `server start` runs uvicorn in this process (one worker), so the
    # configuration holds.
    sys.argv[1:1] = ["server", "start"]
    app()


if __name__ == "__main__":
    main()
