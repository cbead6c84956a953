"""The store: DSNs, numbered idempotent migrations, the data-directory lock."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import run_headwater
from headwater.errors import ConfigError, DataDirLocked, StoreError
from headwater.stream_processors import store as store_module
from headwater.stream_processors.dsn import parse_dsn
from headwater.stream_processors.store import Migration, Store, _DirLock, load_migrations


def test_migrations_are_numbered_and_recorded(store: Store) -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions) and versions[0] == 1
    recorded = store.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version")
    assert [v for v, _ in recorded] == versions
    tables = {t for (t,) in store.query("SELECT name FROM system.tables "
                                       "WHERE database = currentDatabase()")}
    assert {"events", "sources", "dead_letters", "event_chunks", "schema_migrations"} <= tables


def test_migrate_twice_applies_nothing(store: Store) -> None:
    assert store.migrate() == []
    assert store.query("SELECT count() FROM schema_migrations FINAL")[0][0] == len(
        load_migrations())


def test_edited_migration_is_refused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
    monkeypatch.setattr(store_module, "load_migrations", lambda: edited)
    with pytest.raises(StoreError, match="changed after it was applied"):
        store.migrate()


def test_events_table_collapses_redelivered_rows(store: Store) -> None:
    engine = store.query("SELECT engine, sorting_key FROM system.tables WHERE "
                         "database = currentDatabase() AND name = 'events'")[0]
    assert engine == ("ReplacingMergeTree", "run_id, producer_id, seq, event_id")


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("", "empty ClickHouse DSN"),
        ("localhost:8123", "has no scheme"),
        ("postgres://db", "unsupported DSN scheme 'postgres'"),
        ("chdb://", "names no directory"),
        ("http://", "names no host"),
        ("http://host:99999", "invalid port"),
    ],
)
def test_bad_dsn_is_named(dsn: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_dsn(dsn)


def test_password_is_redacted() -> None:
    assert parse_dsn("https://auditor:s3cret@ch:8443/db").redacted == "https://auditor:***@ch:8443/db"


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot open ClickHouse at http://127.0.0.1:9"):
        Store("http://127.0.0.1:9")


def test_locked_data_dir_is_refused(tmp_path: Path) -> None:
    lock = _DirLock(tmp_path)
    try:
        with pytest.raises(DataDirLocked, match=r"in use by another process \(pid \d+[;)]"):
            _DirLock(tmp_path)
        done = run_headwater("migrate", "--dsn", f"chdb://{tmp_path}")
        assert done.returncode == 2
        assert "in use by another process" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        lock.release()


def test_bad_dsn_from_the_cli_is_one_line() -> None:
    done = run_headwater("migrate", "--dsn", "mysql://x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "headwater: error: unsupported DSN scheme 'mysql' in 'mysql://x'; use chdb://DIR or "
        "http(s)://host:8123"
    ]


def test_bad_setting_from_env_is_named() -> None:
    done = run_headwater("status", env={"HEADWATER_LISTEN": "nowhere"})
    assert done.returncode == 2
    assert "setting listen" in done.stderr and "HOST:PORT" in done.stderr


def test_an_embedded_store_left_open_is_closed_at_exit(tmp_path: Path) -> None:
    """A script that ends without close(): the exit hook closes the store first (chDB's
    teardown with a connection still open crashed such exits with SIGSEGV, ~1 in 5 for the
    telemetry test's serve-and-query script), releasing the directory as close() does."""
    closed = Store(f"chdb://{tmp_path / 'b'}")  # chDB: one directory open at a time
    closed.close()
    left_open = Store(f"chdb://{tmp_path / 'a'}")
    assert left_open in store_module._OPEN_EMBEDDED
    assert closed not in store_module._OPEN_EMBEDDED
    store_module._close_open_stores()
    assert left_open not in store_module._OPEN_EMBEDDED
    _DirLock(tmp_path / "a").release()  # the lock is free: the store was closed
    left_open.close()  # closing again does nothing
    closed.close()


def test_a_forked_child_leaving_does_not_close_its_parents_store(tmp_path: Path) -> None:
    """The exit hook closes only stores this process opened: a forked child's copy shares
    the parent's directory lock (flock), and closing it would release the parent's; closing
    the engine's connections in the child hung its exit."""
    store = Store(f"chdb://{tmp_path / 'a'}")
    try:
        pid = os.fork()
        if pid == 0:  # the child runs the exit hook, as its exit would
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(20)  # a hung hook ends the child by SIGALRM, not the test run
            store_module._close_open_stores()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # the hook returned at once
        with pytest.raises(DataDirLocked):
            _DirLock(tmp_path / "a")  # still held by this process's store
        assert store.query("SELECT 1") == [(1,)]
    finally:
        store.close()
