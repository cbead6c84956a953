"""Arrow inserts into the embedded engine as an Arrow stream (chdb's send_insert).

clickhouse-connect's chDB backend writes an Arrow *file* to a temporary file and runs
`INSERT ... FROM INFILE`; handing the engine the same table as an Arrow stream on a chdb
connection of its own skips the file and took 1–44 % less CPU per insert in every case
measured (events and gradients, 1, 100, 1,000 and 8,000 events a batch: issue 18,
docs/design-decisions.md). The engine parses both with the same Arrow reader, so the
rows stored are the same (tests/integration/test_ingest_inserts.py compares them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import chdb
import pyarrow as pa

from headwater.errors import StoreError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.]+$")


class ChdbInserter:
    """One chdb connection for inserts; used by one thread at a time (the caller's lock or
    a thread of its own), as a chdb connection runs one statement at a time."""

    def __init__(self, path: Path, database: str) -> None:
        self._conn = chdb.connect(os.path.realpath(path))  # the spelling chdb compares
        self._database = _checked(database)

    def insert(self, table: str, rows: pa.Table, settings: Mapping[str, str] | None) -> None:
        """Insert `rows` (columns by name) into `table`; StoreError naming it on failure."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        columns = ", ".join(f"`{_checked(c)}`" for c in rows.column_names)
        clause = ", ".join(f"{_checked(k)} = {_value(v)}" for k, v in (settings or {}).items())
        sql = (f"INSERT INTO `{self._database}`.`{_checked(table)}` ({columns})"
               + (f" SETTINGS {clause}" if clause else ""))
        try:
            with self._conn.send_insert(sql, "ArrowStream") as inserter:
                inserter.append(memoryview(sink.getvalue()))
                inserter.finish()
        except RuntimeError as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise StoreError(f"insert into {table} failed: {reason}") from exc

    def close(self) -> None:
        self._conn.close()


def _checked(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a plain identifier")
    return name


def _value(value: str) -> str:
    if not _VALUE.match(value):
        raise ValueError(f"setting value {value!r} is not a plain number or word")
    return value
