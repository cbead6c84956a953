"""The ClickHouse store: one client over a DSN, numbered migrations, Arrow bulk inserts.

The same SQL runs on the embedded engine (`chdb://DIR`) and on a server (`http(s)://`).
chDB allows one process per data directory; the store takes an exclusive lock on it so a
second process gets a clear error instead of a corrupted directory.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import re
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError

from headwater.errors import ConfigError, DataDirLocked, NoStore, StoreError
from headwater.stream_processors.chdb_insert import ChdbInserter
from headwater.stream_processors.cluster_schema import (
    ClusterDdl,
    create_database_sql,
    render_migration,
)
from headwater.stream_processors.dsn import Dsn, parse_dsn
from headwater.stream_processors.retention import (
    DEFAULT_EVENTS_RETENTION_DAYS,
    apply_events_retention,
)

LOCK_NAME = ".headwater.lock"
WRITERS = 2  # insert_all's writers beside the store's own
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Embedded stores still open when the interpreter exits. chDB's engine is torn down with the
# process; a connection (or writer) it still had then crashed the exit with SIGSEGV about
# half the time (a script that served and queried, then ended without close()), so they
# are closed first, at exit, as close() would. A forked child starts with none: its copies
# share the parent's directory lock (flock), and closing them hung the child's exit.
_OPEN_EMBEDDED: weakref.WeakSet[Store] = weakref.WeakSet()
os.register_at_fork(after_in_child=_OPEN_EMBEDDED.clear)


@atexit.register
def _close_open_stores() -> None:
    for store in list(_OPEN_EMBEDDED):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - exiting anyway; one store's error skips no other
            pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements, split on `;` at line ends, comments dropped."""
        lines = [ln for ln in self.sql.splitlines() if not ln.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


def load_migrations() -> list[Migration]:
    """Every `NNNN_name.sql` shipped in headwater.stream_processors.migrations, in order."""
    found = []
    for entry in resources.files("headwater.stream_processors.migrations").iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {versions}")
    return found


class _DirLock:
    """An exclusive flock on the chDB data directory, released when the store closes. The
    lock file holds the holder's pid, then (serve, once bound) its gRPC address."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, address = _holder(os.pread(self._fd, 512, 0))
            os.close(self._fd)
            # only a serve records a gRPC address: the advice depends on who holds it
            advice = (f"in use by headwater serve (pid {pid}, gRPC at {address}); chDB "
                      "allows one process per directory: publish to and query that serve "
                      f"(--listen {address}), or pick another --data-dir" if address else
                      f"in use by another process (pid {pid}; no gRPC address recorded: "
                      "headwater process, replay or migrate, or a serve still starting); "
                      "chDB allows one process per directory: wait for it or stop it, give "
                      "each process its own directory, or run `headwater serve "
                      "--consume-kafka`, which consumes the topic and answers queries from "
                      "one directory (or use a ClickHouse server, --dsn http://...)")
            raise DataDirLocked(f"data directory {directory} is {advice}", pid=pid,
                                address=address) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def record_address(self, address: str) -> None:
        """Record where this process serves gRPC, for CLI commands pointed at the directory."""
        text = f"{os.getpid()}\n{address}\n".encode()
        os.pwrite(self._fd, text, 0)  # the pid stays first: no reader sees an empty file
        os.ftruncate(self._fd, len(text))

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _holder(data: bytes) -> tuple[str, str | None]:
    """(pid, gRPC address or None) from the lock file's bytes."""
    lines = data.decode(errors="replace").split()
    return (lines[0] if lines else "unknown"), (lines[1] if len(lines) > 1 else None)


def lock_holder(directory: Path) -> tuple[str, str | None] | None:
    """(pid, gRPC address or None) of the process holding `directory`'s lock, None when no
    process holds it. Creates nothing."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(os.pread(fd, 512, 0))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Store:
    """A ClickHouse database reached through clickhouse-connect (thread-safe)."""

    def __init__(self, dsn: str, database: str = "headwater", *, lock: bool = True,
                 cluster: str | None = None, create: bool = True) -> None:
        """`create=False` (read commands): an embedded store that does not exist yet, or a
        server without the database, is NoStore; nothing is created."""
        self.dsn: Dsn = parse_dsn(dsn)
        self._create = create
        if not create and self.dsn.embedded:
            assert self.dsn.path is not None
            if not self.dsn.path.is_dir():
                raise NoStore(f"no Headwater store at {self.dsn.path}")
        if not _DB_NAME.match(database):
            raise ConfigError(f"database name {database!r} must match {_DB_NAME.pattern}")
        if cluster is not None and (self.dsn.embedded or not _DB_NAME.match(cluster)):
            raise ConfigError(f"cluster {cluster!r}: cluster mode needs an http(s):// DSN "
                              f"and a name matching {_DB_NAME.pattern}")
        self.database = database
        self.cluster = cluster  # None: single node; else the schema is ON CLUSTER (sharded)
        self._mutex = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None  # insert_all's writers, on first use
        self._local = threading.local()
        self._writer_clients: list[Any] = []  # every writer opened, closed with the store
        self._inserter: Any = None  # the store's own writer (insert), on first use
        self._lock: _DirLock | None = None
        if self.dsn.embedded and lock:
            assert self.dsn.path is not None
            self._lock = _DirLock(self.dsn.path)
        self._closed = False
        try:
            self._client = self._connect()
        except BaseException:
            if self._lock:
                self._lock.release()
            raise
        if self.dsn.embedded:
            _OPEN_EMBEDDED.add(self)

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {}
        if self.dsn.embedded:
            assert self.dsn.path is not None
            kwargs["dsn"] = f"chdb://{self.dsn.path.resolve()}"
        else:
            kwargs["dsn"] = self.dsn.raw
            kwargs["connect_timeout"] = 5
        try:
            bootstrap = clickhouse_connect.get_client(**kwargs)
            if getattr(self, "_create", True):
                bootstrap.command(create_database_sql(self.database, self.cluster))
            elif not bootstrap.command(f"EXISTS DATABASE {self.database}"):
                bootstrap.close()
                raise NoStore(f"no Headwater database {self.database} at {self.dsn.redacted}")
            if self.dsn.embedded:
                bootstrap.close()
            client = clickhouse_connect.get_client(database=self.database, **kwargs)
        except NoStore:
            raise
        except Exception as exc:  # driver errors vary by backend: report them in one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot open ClickHouse at {self.dsn.redacted}: {reason}") from exc
        # Timestamps are stored and read as UTC whatever the host's zone.
        return client

    def record_address(self, address: str) -> None:
        """serve, once bound: record its gRPC address in the data directory's lock, so CLI
        commands pointed at the directory reach this server (and no other)."""
        if self._lock is not None:
            self._lock.record_address(address)

    def open_client(self) -> Any:
        """A separate client on the same database: its own chDB handle (or HTTP session),
        so what runs there neither waits for nor changes the state of the store's own."""
        return self._connect()

    # -- schema -------------------------------------------------------------------------

    def migrate(self, events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS
                ) -> list[Migration]:
        """Apply every migration not yet recorded, then the events retention TTL; return the
        migrations applied now (idempotent)."""
        with self._mutex:
            for ddl in render_migration(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
                "checksum String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
                "ENGINE = ReplacingMergeTree ORDER BY version", self.cluster, self.database
            ):
                self.command(ddl)
            done = {
                int(v): c
                for v, c in self.query("SELECT version, checksum FROM schema_migrations FINAL")
            }
            applied = []
            for mig in load_migrations():
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise StoreError(
                            f"migration {mig.version:04d}_{mig.name} changed after it was "
                            "applied; add a new numbered migration instead of editing it"
                        )
                    continue
                statements = (render_migration(mig.sql, self.cluster, self.database)
                              if self.cluster else mig.statements())
                for statement in statements:
                    self.command(statement)
                self.command(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES "
                    "({v:UInt32}, {n:String}, {c:String})",
                    {"v": mig.version, "n": mig.name, "c": mig.checksum},
                )
                applied.append(mig)
            apply_events_retention(
                ClusterDdl(self, self.cluster, self.database) if self.cluster else self,
                events_retention_days)
            return applied

    # -- I/O ------------------------------------------------------------------------------

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Rows of a parameterised query ({name:Type} placeholders; never format SQL)."""
        with self._mutex:
            try:
                return list(self._client.query(sql, parameters=parameters).result_rows)
            except ClickHouseError as exc:
                raise StoreError(first_line(exc)) from exc

    def query_arrow(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        """An Arrow table; String columns come back as binary (no UTF-8 decoding)."""
        with self._mutex:
            try:
                return self._client.query_arrow(sql, parameters=parameters, use_strings=False)
            except ClickHouseError as exc:
                raise StoreError(first_line(exc)) from exc

    def query_columns(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple]]:
        """Column names and rows of Headwater's own SQL (users' SQL goes through
        query_service.sql.reader, which checks and bounds it)."""
        with self._mutex:
            try:
                result = self._client.query(sql, parameters=parameters)
            except ClickHouseError as exc:
                raise StoreError(first_line(exc)) from exc
            return list(result.column_names), list(result.result_rows)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._mutex:
            try:
                return self._client.command(sql, parameters=parameters)
            except ClickHouseError as exc:
                raise StoreError(first_line(exc)) from exc

    def insert(self, table: str, rows: pa.Table,
               settings: Mapping[str, str] | None = None) -> None:
        """Bulk insert an Arrow table (columns by name), with engine `settings` if any."""
        if rows.num_rows == 0:
            return
        _failing_insert_hook(table)
        with self._mutex:
            if self._inserter is None:  # a server's inserts go through the store's client
                self._inserter = self._open_writer() if self.dsn.embedded else self._client
                if self._inserter is not self._client:
                    self._writer_clients.append(self._inserter)
            _write(self._inserter, table, rows, settings)

    def insert_all(self, tables: list[tuple[str, pa.Table]],
                   settings: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Insert several Arrow tables with no order among them, at once: the first on this
        store's client, the others each on a writer client of its own (the engine works
        on them in parallel, outside the GIL, while a store's own calls are serial).
        `settings`: engine settings per table name. Returns when every insert has
        finished; raises the first failure (StoreError)."""
        per_table = settings or {}
        work = [(table, rows, per_table.get(table)) for table, rows in tables if rows.num_rows]
        if len(work) < 2:
            for table, rows, extra in work:
                self.insert(table, rows, extra)
            return
        pending = [self._writers().submit(self._insert_on_writer, *w) for w in work[1:]]
        try:
            self.insert(*work[0])
        finally:
            failures = [f.exception() for f in pending]  # waits for each
        for failure in failures:
            if failure is not None:
                raise failure

    def _writers(self) -> ThreadPoolExecutor:
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="headwater-insert")
            return self._pool

    def _insert_on_writer(self, table: str, rows: pa.Table,
                          settings: Mapping[str, str] | None) -> None:
        """One insert on the calling pool thread's own writer (opened on first use)."""
        writer = getattr(self._local, "writer", None)
        if writer is None:
            writer = self._local.writer = self._open_writer()
            with self._mutex:
                self._writer_clients.append(writer)
        _failing_insert_hook(table)
        _write(writer, table, rows, settings)

    def _open_writer(self) -> Any:
        """What inserts go through: on chDB a connection of its own taking Arrow streams
        (chdb_insert), on a server a client of its own."""
        if self.dsn.embedded:
            assert self.dsn.path is not None
            return ChdbInserter(self.dsn.path.resolve(), self.database)
        return self.open_client()

    def close(self) -> None:
        """Release the connections, the writers and the directory lock (again: nothing)."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            _OPEN_EMBEDDED.discard(self)
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._mutex:
            for client in self._writer_clients:
                client.close()
            self._writer_clients.clear()
            self._inserter = None
            try:
                self._client.close()
            finally:
                if self._lock:
                    self._lock.release()
                    self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write(writer: Any, table: str, rows: pa.Table, settings: Mapping[str, str] | None) -> None:
    """Insert through a writer from Store._open_writer (StoreError on failure)."""
    if isinstance(writer, ChdbInserter):
        writer.insert(table, rows, settings)
        return
    try:
        writer.insert_arrow(table, rows, settings=dict(settings or {}))
    except ClickHouseError as exc:
        raise StoreError(f"insert into {table} failed: {first_line(exc)}") from exc


FAIL_INSERTS = "HEADWATER_TEST_FAIL_INSERTS"


def _failing_insert_hook(table: str) -> None:
    """Fault injection for tests only (tests/e2e/test_faults.py): while the file named by
    HEADWATER_TEST_FAIL_INSERTS exists, every insert fails with its text as the engine's
    error (e.g. a disk-full message), the way a full or read-only disk fails a write."""
    flag = os.environ.get(FAIL_INSERTS)
    if flag and os.path.exists(flag):
        reason = Path(flag).read_text().strip() or "injected write failure"
        raise StoreError(f"insert into {table} failed: {reason}")


def first_line(exc: BaseException) -> str:
    """The first line of an engine error: what the CLI and gRPC show."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
