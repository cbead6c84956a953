"""The schema's two variants: single node as written (applied on chDB here) and cluster mode
(ON CLUSTER, Replicated*MergeTree locals, Distributed tables) checked statement by statement
with ClickHouse's own parser (formatQuery in chDB) — a cluster with Keeper is not available
to the tests."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from headwater.errors import ConfigError
from headwater.query_service.settings import Settings
from headwater.stream_processors.cluster_schema import (
    ClusterDdl,
    ClusterSchemaError,
    create_database_sql,
    local_lookups,
    render_migration,
    split_statements,
)
from headwater.stream_processors.retention import apply_events_retention
from headwater.stream_processors.store import Store, load_migrations

CLUSTER, DB = "headwater", "hw"


def _format(store: Store, sql: str) -> str:
    """ClickHouse's canonical text of one statement (raises on a syntax error)."""
    return store.query("SELECT formatQuery({q:String})", {"q": sql})[0][0]


def _columns(store: Store, database: str) -> dict[str, list[tuple]]:
    rows = store.query("SELECT table, name, type, default_expression, compression_codec "
                       "FROM system.columns WHERE database = {d:String} "
                       "ORDER BY table, position", {"d": database})
    out: dict[str, list[tuple]] = {}
    for table, *col in rows:
        out.setdefault(table, []).append(tuple(col))
    return out


def test_single_node_variant_is_the_migrations_as_written_and_applies_on_chdb(
    store: Store, chdb_dir: Path
) -> None:
    for mig in load_migrations():
        rendered = render_migration(mig.sql, None)
        assert rendered == [s.rstrip(";").strip() for s in mig.statements()]
        assert rendered == split_statements(mig.sql)
    # the rendered statements, unqualified, in a database of their own on the same chDB
    other = Store(f"chdb://{chdb_dir}", database=f"t_{uuid.uuid4().hex[:12]}", lock=False)
    try:
        for mig in load_migrations():
            for statement in render_migration(mig.sql, None):
                other.command(statement)
        migrated = _columns(store, store.database)
        migrated.pop("schema_migrations")
        assert _columns(store, other.database) == migrated  # same tables, columns, codecs
        assert "events" in migrated and "lineage_edges" in migrated
    finally:
        other.command(f"DROP DATABASE IF EXISTS {other.database}")
        other.close()


def test_cluster_variant_statement_by_statement(store: Store) -> None:
    tables, views = 0, 0
    for mig in load_migrations():
        for single in split_statements(mig.sql):
            cluster = render_migration(single, CLUSTER, DB)
            canon = [_format(store, s) for s in cluster]  # every statement parses
            head = _format(store, single)
            if head.startswith("INSERT INTO"):  # a backfill runs once, through Distributed
                assert canon == [head]
                continue
            assert all(f" ON CLUSTER {CLUSTER}" in c.splitlines()[0] for c in canon)
            if m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)\n", head):
                name, tables = m.group(1), tables + 1
                local, dist = canon
                order = re.search(r"^ORDER BY (.+)$", head, re.M).group(1).strip("()")
                engine = re.search(r"^ENGINE = (\w+)", head, re.M).group(1)
                # the local table is the single-node table under another name and engine
                expected = head.replace(f"EXISTS {name}\n",
                                        f"EXISTS {name}_local ON CLUSTER {CLUSTER}\n")
                expected = re.sub(
                    r"^ENGINE = \w+.*$",
                    f"ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/{{database}}/"
                    f"{name}_local', '{{replica}}')", expected, flags=re.M)
                assert local == expected
                assert dist == (
                    f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER {CLUSTER} AS {name}_local\n"
                    f"ENGINE = Distributed({CLUSTER}, {DB}, {name}_local, "
                    f"cityHash64({order}))")
            elif head.startswith("CREATE VIEW"):
                views += 1
                (view,) = canon
                name = re.match(r"CREATE VIEW IF NOT EXISTS (\w+)\n", head).group(1)
                assert view == head.replace(
                    f" IF NOT EXISTS {name}\n", f" IF NOT EXISTS {name} ON CLUSTER {CLUSTER}\n", 1)
                assert "_local" not in view  # views read the Distributed tables
            elif head.startswith("ALTER TABLE") and "COLUMN" not in head:
                # data-skipping indexes and TTLs live on the replicated local tables only
                name = head.split()[2]
                assert [c.split()[2] for c in canon] == [f"{name}_local"]
            elif head.startswith("ALTER TABLE") and "MODIFY ORDER BY" in head:
                # a column appended to the sorting key: whole on the local table, the
                # column alone on the Distributed one
                name = head.split()[2]
                assert [c.split()[2] for c in canon] == [f"{name}_local", name]
                assert canon[0].split("\n", 1)[1] == head.split("\n", 1)[1]
                assert "ADD COLUMN" in canon[1] and "ORDER BY" not in canon[1]
            elif head.startswith("ALTER TABLE"):
                name = head.split()[2]
                assert [c.split()[2] for c in canon] == [f"{name}_local", name]
                assert [c.split("\n", 1)[1] for c in canon] == [head.split("\n", 1)[1]] * 2
            else:
                pytest.fail(f"unexpected statement {head[:60]}")
    assert tables == sum(m.sql.count("CREATE TABLE") for m in load_migrations()) >= 13
    assert views >= 1


def test_cluster_mode_refuses_what_it_cannot_translate() -> None:
    cases = {
        "CREATE MATERIALIZED VIEW mv TO t AS SELECT 1": "CREATE MATERIALIZED VIEW",
        "CREATE TABLE m (x UInt8) ENGINE = Memory": "engine Memory has no replicated form",
        "CREATE TABLE m (x UInt8) ENGINE = MergeTree": "no ORDER BY key",
        "ALTER TABLE events ADD COLUMN y UInt8, MODIFY TTL toDateTime(emitted_at)": "split",
        "DROP TABLE events": "DROP TABLE events",
    }
    for sql, why in cases.items():
        with pytest.raises(ClusterSchemaError, match=why):
            render_migration(sql, CLUSTER, DB)
    with pytest.raises(ClusterSchemaError, match="cluster name"):
        render_migration("CREATE VIEW v AS SELECT 1", "bad-name; DROP", DB)


def test_engine_arguments_and_ttl_alter_in_cluster_mode() -> None:
    local, dist = render_migration(
        "CREATE TABLE t (k String, v UInt64) ENGINE = ReplacingMergeTree(v) "
        "PARTITION BY k ORDER BY (k) SETTINGS index_granularity = 8192", CLUSTER, DB)
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/" \
           "t_local', '{replica}', v)" in local
    assert local.endswith("PARTITION BY k ORDER BY (k) SETTINGS index_granularity = 8192")
    assert dist.endswith("Distributed(headwater, hw, t_local, cityHash64(k))")
    assert render_migration("ALTER TABLE events MODIFY TTL toDateTime(emitted_at) + "
                            "toIntervalDay(190)", CLUSTER, DB) == [
        "ALTER TABLE events_local ON CLUSTER headwater MODIFY TTL toDateTime(emitted_at) + "
        "toIntervalDay(190)"]
    assert create_database_sql(DB, CLUSTER) == "CREATE DATABASE IF NOT EXISTS hw ON CLUSTER " \
                                               "headwater"
    assert create_database_sql(DB, None) == "CREATE DATABASE IF NOT EXISTS hw"


class _CommandsRecorded:
    """A real chDB store for reads; DDL recorded instead of run (chDB has no cluster)."""

    def __init__(self, store: Store) -> None:
        self.store, self.commands = store, []

    def query(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self.store.query(sql, parameters)

    def command(self, sql: str, parameters: dict | None = None) -> None:
        self.commands.append(sql)


def test_retention_in_cluster_mode_reads_and_alters_the_local_table(store: Store) -> None:
    store.command("CREATE TABLE events_local (emitted_at DateTime64(6, 'UTC')) ENGINE = "
                  "MergeTree ORDER BY emitted_at TTL toDateTime(emitted_at) + "
                  "toIntervalDay(200)")
    recorder = _CommandsRecorded(store)
    ddl = ClusterDdl(recorder, CLUSTER, store.database)
    assert apply_events_retention(ddl, 200) is False  # events_local already has 200 days
    assert recorder.commands == []
    assert apply_events_retention(ddl, 250) is True
    assert recorder.commands == [
        "ALTER TABLE events_local ON CLUSTER headwater MODIFY TTL toDateTime(emitted_at) + "
        "toIntervalDay(250)"]
    assert local_lookups("SELECT 1 FROM system.tables WHERE name = 'events'") == \
        "SELECT 1 FROM system.tables WHERE name = 'events_local'"
    assert local_lookups("SELECT name = 'events' FROM events") == \
        "SELECT name = 'events' FROM events"


def test_cluster_is_a_setting_and_needs_a_server_dsn(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cluster is None
    monkeypatch.setenv("HEADWATER_CLUSTER", "headwater")
    assert Settings().cluster == "headwater"
    with pytest.raises(ConfigError, match="http"):
        Store(f"chdb://{tmp_path}", cluster="headwater")
