"""Per-source and per-split counts computed from the source files themselves (Art. 10(2)).

When a source's file is reachable from where the report is built (a `file://` URI) and its
bytes still hash to the SHA-256 registered in its SourceRegistered event, the file is read
and, per split (all rows, and the rows each split draws on row-wise), every column's
missing values are counted and, for columns with few distinct values (labels, categories),
the rows per value (class balance). Only counts leave the store: no value of a column with
many distinct values is reported, and a personal column's values are replaced by their
rank ("value 1" is the most frequent), so its balance shows but its values do not.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.producers.tracking.sources import file_sha256
from headwater.query_service.compliance.model import ColumnCounts, SourceStatistics

MAX_DISTINCT = 10  # a column with at most this many distinct values gets value counts
MAX_BYTES = 512 * 2**20  # larger files are not read here (bounded work)


def _read(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))


def _counts(table: pa.Table, personal: set[str]) -> list[ColumnCounts]:
    out = []
    for name in table.column_names:
        column = table[name]
        missing = column.null_count
        if pa.types.is_floating(column.type):
            missing += int(pc.sum(pc.is_nan(column)).as_py() or 0)
        distinct = pc.unique(column.drop_null())
        values = None
        if len(distinct) <= MAX_DISTINCT:
            counted = pc.value_counts(column.drop_null()).to_pylist()
            if name in personal:
                counts = sorted((int(v["counts"]) for v in counted), reverse=True)
                values = {f"value {i}": n for i, n in enumerate(counts, 1)}
            else:
                values = {str(v["values"]): int(v["counts"]) for v in counted}
        out.append(ColumnCounts(column=name, missing=int(missing), value_counts=values))
    return out


def read_verified(uri: str, fmt: str, sha256: str) -> pa.Table | str:
    """A source's file as a table when it is reachable and still hashes to the registered
    SHA-256; otherwise why not (nothing is computed from a file that is not the one
    registered)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return f"only file:// sources are read here, not {parts.scheme or uri}"
    if fmt not in ("csv", "parquet"):
        return f"format {fmt!r} is not read here (csv, parquet)"
    path = Path(unquote(parts.path))
    if not path.is_file():
        return f"{path} is not reachable from where the report is built"
    if path.stat().st_size > MAX_BYTES:
        return f"{path.name} is larger than {MAX_BYTES // 2**20} MiB"
    if file_sha256(path) != sha256:
        return (f"{path.name} no longer hashes to the registered SHA-256: it is not the file "
                "that was registered, so nothing is computed from it")
    try:
        return _read(path, fmt)
    except (pa.ArrowInvalid, OSError) as exc:
        return f"{path.name} could not be read: {exc}"[:300]


def source_statistics(source_id: str, read: pa.Table | str, splits: dict[str, set[int]],
                      personal: list[str]) -> SourceStatistics:
    """Counts over all rows and over each split's rows (source row numbers) of one source;
    `read`: read_verified's answer."""
    if isinstance(read, str):
        return SourceStatistics(source_id=source_id, status="not computed", detail=read,
                                by_split={})
    table = read
    hidden = set(personal)
    by_split = {"all rows": _counts(table, hidden)}
    for split, rows in splits.items():
        index = np.asarray(sorted(r for r in rows if r < table.num_rows), dtype=np.int64)
        by_split[split] = _counts(table.take(pa.array(index)), hidden)
    return SourceStatistics(source_id=source_id, status="computed",
                            detail="the file read after its SHA-256 matched the registered "
                                   f"one; {table.num_rows:,} rows",
                            by_split=by_split)
