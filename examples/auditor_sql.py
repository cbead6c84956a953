"""An auditor's SQL session: the audit views of docs/sql.md against a data directory (or a
running serve with --listen), read-only, printed as tables.

    python examples/auditor_sql.py --data-dir demo-output/.headwater --model demo-mlp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from headwater.query_service.client.remote import RemoteStore

QUERIES = {
    "sources behind the model's training (files, content hashes, licences)": (
        "SELECT DISTINCT s.source_id AS source_id, s.uri AS uri, s.content_sha256 AS sha256, "
        "s.licence AS licence "
        "FROM audit_source_models AS m INNER JOIN sources AS s FINAL "
        "ON s.source_id = m.source_id WHERE m.model_id = {model:String} ORDER BY s.uri"),
    "model versions trained on each source": (
        "SELECT source_id, model_version, gradient_kind, groupArray(training_node_id) AS nodes "
        "FROM audit_source_models WHERE model_id = {model:String} "
        "GROUP BY source_id, model_version, gradient_kind ORDER BY source_id, model_version"),
    "erasures: who asked, why, and what applying it did": (
        "SELECT request_id, requested_by, reason, affected_rows, outcome, previous_version, "
        "new_version, rows_forgotten, forget_loss_before, forget_loss_after, tombstones "
        "FROM audit_erasures WHERE model_id = {model:String} ORDER BY requested_at"),
    "log coverage per producer": (
        "SELECT run_id, producer_id, events, first_seq, last_seq, missing_seqs, "
        "duplicate_seqs FROM audit_log_coverage ORDER BY first_emitted_at"),
}


def open_reader(data_dir: Path | None, listen: str | None):
    """The store read directly, or a running serve's read-only SQL."""
    if listen:
        return RemoteStore(listen)
    from headwater.stream_processors.store import Store

    if data_dir is None or not (data_dir / "clickhouse").exists():
        raise SystemExit(f"no store in {data_dir}: run `headwater demo` first, or pass "
                         "--listen to ask a running serve")
    return Store(f"chdb://{data_dir / 'clickhouse'}")


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("demo-output/.headwater"))
    parser.add_argument("--listen", default=None, help="HOST:PORT of a running serve")
    parser.add_argument("--model", required=True, help="the model id to audit")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args(argv)
    console = Console()
    reader = open_reader(args.data_dir, args.listen)
    found: dict[str, list[dict]] = {}
    try:
        for title, sql in QUERIES.items():
            columns, rows = reader.query_columns(sql, {"model": args.model})
            found[title] = [dict(zip(columns, r, strict=True)) for r in rows]
            if args.json:
                for row in found[title]:
                    print(json.dumps({"query": title, **row}, default=str))
                continue
            table = Table(*columns, title=title)
            for r in rows:
                table.add_row(*(str(v) for v in r))
            console.print(table)
    finally:
        reader.close()
    return found


if __name__ == "__main__":
    main()
