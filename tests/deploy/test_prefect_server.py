"""The local stack's Prefect server begins SQLite write transactions IMMEDIATE: a transaction that reads
and then writes (a subflow's task-run creation) no longer fails "database is locked" when another
connection commits in between, which cost a 2 s client backoff in most local analysis runs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.server.database.dependencies import MODELS_DEPENDENCIES, provide_database_interface
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

from deployments.prefect_server import ImmediateWritesSqlite, use_immediate_sqlite_writes


async def _read_then_write(config: AioSqliteConfiguration, db: Path) -> tuple[str | None, str | None]:
    """What the server does in one transaction (read, then insert) while another connection writes
    between the two. Returns (the transaction's error, the other writer's error), None for success."""
    engine = await config.engine()
    async with engine.connect() as connection:
        await connection.exec_driver_sql("CREATE TABLE runs (id INTEGER)")
    other = sqlite3.connect(db, timeout=0, isolation_level=None)  # answers at once instead of waiting
    mine: str | None = None
    theirs: str | None = None
    try:
        session = await config.session(engine)
        async with session:
            try:
                async with config.begin_transaction(session):
                    await session.execute(sa.text("SELECT count(*) FROM runs"))
                    try:
                        other.execute("INSERT INTO runs VALUES (2)")
                    except sqlite3.OperationalError as error:
                        theirs = str(error)
                    await session.execute(sa.text("INSERT INTO runs VALUES (1)"))
            except sa.exc.OperationalError as error:
                mine = str(error.orig)
        if theirs is not None:  # refused while the transaction held the lock: its turn comes after
            other.execute("INSERT INTO runs VALUES (2)")
        assert sorted(r for (r,) in other.execute("SELECT id FROM runs")) == ([1, 2] if mine is None else [2])
    finally:
        other.close()
        await engine.dispose()
    return mine, theirs


def test_prefects_deferred_sqlite_transaction_fails_when_another_write_lands_between_its_read_and_write(
    tmp_path: Path,
) -> None:
    """The race itself, in Prefect's own configuration. If this starts passing, Prefect fixed it upstream
    and ``deployments/prefect_server.py`` can go."""
    db = tmp_path / "prefect.db"
    mine, theirs = asyncio.run(_read_then_write(AioSqliteConfiguration(f"sqlite+aiosqlite:///{db}"), db))
    assert theirs is None
    assert mine == "database is locked"


def test_immediate_writes_take_the_lock_before_reading_so_the_other_writer_waits_its_turn(tmp_path: Path) -> None:
    db = tmp_path / "prefect.db"
    mine, theirs = asyncio.run(_read_then_write(ImmediateWritesSqlite(f"sqlite+aiosqlite:///{db}"), db))
    assert mine is None
    assert theirs == "database is locked"  # with a busy timeout, as the server has, it would wait instead


def test_the_local_server_uses_immediate_writes_on_sqlite_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for slot in list(MODELS_DEPENDENCIES):  # restored after the test: the session's own server keeps its own
        monkeypatch.setitem(MODELS_DEPENDENCIES, slot, None)
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: "postgresql+asyncpg://u:p@127.0.0.1/prefect"}):
        assert use_immediate_sqlite_writes() is False
    assert MODELS_DEPENDENCIES["database_config"] is None

    url = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
        assert use_immediate_sqlite_writes() is True
        config = provide_database_interface().database_config
    assert isinstance(config, ImmediateWritesSqlite)
    assert config.connection_url == url
