"""Describing source files for `SourceRegistered`: streamed SHA-256, rows, schema.

The full tracked-data API (loading CSV/Parquet/NumPy/pandas/torch as tracked arrays)
builds on this.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from headwater.v1 import events_pb2

CHUNK = 1 << 20  # 1 MiB: hashing memory stays bounded whatever the file size


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def source_id_for(uri: str, content_sha256: str) -> str:
    """Stable id: the same file (same URI, same bytes) always gets the same id."""
    return "src-" + hashlib.sha256(f"{uri}\0{content_sha256}".encode()).hexdigest()[:24]


def describe_csv(path: str | Path, *, origin: str = "", licence: str = "",
                 personal: tuple[str, ...] = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a CSV file with a header row (dtypes from the first row)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty: a header row is expected") from None
        first = next(reader, None)
        rows = (1 if first is not None else 0) + sum(1 for _ in reader)
    unknown = set(personal) - set(header)
    if unknown:
        raise ValueError(f"personal columns {sorted(unknown)} are not in {path.name}'s header")
    dtypes = [_dtype(v) for v in first] if first else ["string"] * len(header)
    uri = path.as_uri()
    sha = file_sha256(path)
    return events_pb2.SourceRegistered(
        source_id=source_id_for(uri, sha), uri=uri, content_sha256=sha, row_count=rows,
        schema=[events_pb2.Column(name=n, dtype=t, personal=n in personal)
                for n, t in zip(header, dtypes, strict=True)],
        format="csv", size_bytes=path.stat().st_size, origin=origin, licence=licence,
    )


def _dtype(value: str) -> str:
    for cast, name in ((int, "int64"), (float, "float64")):
        try:
            cast(value)
            return name
        except ValueError:
            pass
    return "string"
