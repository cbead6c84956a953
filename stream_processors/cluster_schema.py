"""Cluster mode of the schema: the migrations' DDL rendered for a sharded, replicated
ClickHouse cluster (pure functions over SQL text; no I/O).

Single node (cluster None): the statements run as written. Cluster mode, for a cluster
named in `remote_servers` with Keeper for distributed DDL:

- `CREATE TABLE t (...) ENGINE = XMergeTree ...` becomes `t_local ON CLUSTER c` with engine
  `ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/t_local', '{replica}')`
  (the operator's `{shard}` / `{replica}` macros), plus `t ON CLUSTER c AS t_local ENGINE =
  Distributed(c, db, t_local, cityHash64(<ORDER BY key>))`. The Distributed table keeps the
  original name, so every query and insert of the application reads and writes the whole
  cluster unchanged; sharding by the sorting key sends every copy of a row to one shard, so
  ReplacingMergeTree's collapse (and `FINAL`) stays correct per shard.
- `CREATE VIEW v` gains `ON CLUSTER c`; it reads the Distributed tables by their names.
- `ALTER TABLE t` of columns runs on `t_local` and on `t`; any other ALTER (TTL, settings,
  mutations) only on `t_local`, the table that holds data; a column added and appended to
  the sorting key in one ALTER (`ADD COLUMN c, MODIFY ORDER BY (..., c)`) runs whole on
  `t_local`, its column changes on `t`.
- Anything else (materialized views, other engines, DROP, INSERT) is refused by name: it
  needs a hand-written cluster form, not a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from headwater.errors import ClusterSchemaError

LOCAL_SUFFIX = "_local"
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_MERGE_TREES = {"MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree",
                "CollapsingMergeTree", "VersionedCollapsingMergeTree"}
_CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\(", re.I)
_CREATE_VIEW = re.compile(r"^CREATE\s+(OR\s+REPLACE\s+)?VIEW\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s+"
                          r"AS\s", re.I)
_ALTER_TABLE = re.compile(r"^ALTER\s+TABLE\s+(\w+)\s+", re.I)
_INSERT_SELECT = re.compile(r"^INSERT\s+INTO\s+\w+\s*(\([^()]*\))?\s*SELECT\s", re.I)
_ENGINE = re.compile(r"^\s*ENGINE\s*=\s*(\w+)\s*", re.I)
_ORDER_BY = re.compile(r"\bORDER\s+BY\s+(.+?)(?=\s+(?:PARTITION\s+BY|PRIMARY\s+KEY|SAMPLE\s+BY"
                       r"|TTL|SETTINGS)\b|\s*$)", re.I | re.S)
_COLUMN_COMMAND = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_ORDER_BY_COMMAND = re.compile(r"^MODIFY\s+ORDER\s+BY\b", re.I)



def split_statements(sql: str) -> list[str]:
    """The statements of a migration file: `;` at line ends, `--` comment lines dropped
    (the same split Store applies on a single node)."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip().rstrip(";").strip() for s in "\n".join(lines).split(";\n")
            if s.strip().rstrip(";").strip()]


def check_identifier(name: str, what: str) -> str:
    if not _IDENT.match(name):
        raise ClusterSchemaError(f"{what} {name!r} must match {_IDENT.pattern}")
    return name


def render_migration(sql: str, cluster: str | None, database: str = "headwater") -> list[str]:
    """The statements that apply migration `sql`: as written on a single node (cluster
    None), or rendered for `cluster` (see the module docstring)."""
    statements = split_statements(sql)
    if cluster is None:
        return statements
    check_identifier(cluster, "cluster name")
    check_identifier(database, "database name")
    return [out for s in statements for out in render_statement(s, cluster, database)]


def render_statement(statement: str, cluster: str, database: str) -> list[str]:
    """One single-node statement as the cluster statements that replace it."""
    text = statement.strip().rstrip(";").strip()
    if m := _CREATE_TABLE.match(text):
        return _create_table(text, m, cluster, database)
    if m := _CREATE_VIEW.match(text):
        head = text[: m.end(3)]
        return [f"{head} ON CLUSTER {cluster}{text[m.end(3):]}"]
    if m := _ALTER_TABLE.match(text):
        return _alter_table(m.group(1), text[m.end():], cluster)
    if _INSERT_SELECT.match(text):  # a backfill: once, through the Distributed tables
        return [text]
    first = " ".join(text.split()[:3])
    raise ClusterSchemaError(
        f"cluster mode cannot render {first!r}…: only CREATE TABLE (MergeTree family), "
        "CREATE VIEW, ALTER TABLE and INSERT ... SELECT are translated; write this "
        "statement's cluster form")


def create_database_sql(database: str, cluster: str | None) -> str:
    """CREATE DATABASE, on every node of `cluster` when one is given."""
    on = f" ON CLUSTER {check_identifier(cluster, 'cluster name')}" if cluster else ""
    return f"CREATE DATABASE IF NOT EXISTS {check_identifier(database, 'database name')}{on}"


def local_name(table: str) -> str:
    return f"{table}{LOCAL_SUFFIX}"


def _create_table(text: str, m: re.Match[str], cluster: str, database: str) -> list[str]:
    name = m.group(2)
    close = _matching_paren(text, m.end() - 1)
    columns = text[m.end() - 1: close + 1]
    tail = text[close + 1:]
    engine = _ENGINE.match(tail)
    if engine is None:
        raise ClusterSchemaError(f"CREATE TABLE {name}: no ENGINE clause after the columns")
    kind = engine.group(1)
    if kind not in _MERGE_TREES:
        raise ClusterSchemaError(f"CREATE TABLE {name}: engine {kind} has no replicated form "
                                 f"(one of {sorted(_MERGE_TREES)} expected)")
    rest = tail[engine.end():]
    args = ""
    if rest.startswith("("):
        end = _matching_paren(rest, 0)
        args, rest = rest[1:end].strip(), rest[end + 1:]
    order = _ORDER_BY.search(rest)
    if order is None:
        raise ClusterSchemaError(f"CREATE TABLE {name}: no ORDER BY key to shard by")
    key = order.group(1).strip()
    if key.startswith("(") and _matching_paren(key, 0) == len(key) - 1:
        key = key[1:-1].strip()
    if not key:
        raise ClusterSchemaError(f"CREATE TABLE {name}: empty ORDER BY key cannot shard rows")
    local = local_name(name)
    replicated_args = ", ".join(
        [f"'{REPLICA_PATH}{local}'", "'{replica}'", *([args] if args else [])])
    if_not = "IF NOT EXISTS " if m.group(1) else ""
    return [
        f"CREATE TABLE {if_not}{local} ON CLUSTER {cluster}\n{columns}\n"
        f"ENGINE = Replicated{kind}({replicated_args})\n{rest.strip()}",
        f"CREATE TABLE {if_not}{name} ON CLUSTER {cluster} AS {local}\n"
        f"ENGINE = Distributed({cluster}, {database}, {local}, cityHash64({key}))",
    ]


def _alter_table(table: str, commands_text: str, cluster: str) -> list[str]:
    commands = _split_top_level(commands_text)
    column_ops = [bool(_COLUMN_COMMAND.match(c)) for c in commands]
    local = f"ALTER TABLE {local_name(table)} ON CLUSTER {cluster} {commands_text.strip()}"
    if all(column_ops):
        return [local, f"ALTER TABLE {table} ON CLUSTER {cluster} {commands_text.strip()}"]
    if any(column_ops) and all(ok or _ORDER_BY_COMMAND.match(c)
                               for c, ok in zip(commands, column_ops, strict=True)):
        # columns added and appended to the sorting key in one ALTER (ClickHouse allows no
        # other way): all of it on the local table, the column changes on the Distributed
        columns_only = ", ".join(c.strip() for c, ok in zip(commands, column_ops, strict=True)
                                 if ok)
        return [local, f"ALTER TABLE {table} ON CLUSTER {cluster} {columns_only}"]
    if any(column_ops):
        raise ClusterSchemaError(
            f"ALTER TABLE {table} mixes column changes with other commands; in cluster mode "
            "the first also apply to the Distributed table and the others do not: split them")
    return [local]


def _scan(text: str, start: int = 0) -> Iterator[tuple[int, str, int, bool]]:
    """(index, char, parenthesis depth after it, quoted) for text[start:]; quoted is true
    inside '…', `…` and "…" (backslash escapes honoured) and on their quote marks."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            yield i, ch, depth, True
        elif ch in "'`\"":
            quote = ch
            yield i, ch, depth, True
        else:
            depth += (ch == "(") - (ch == ")")
            yield i, ch, depth, False


def _matching_paren(text: str, start: int) -> int:
    """Index of the `)` closing the `(` at `start`, skipping quoted strings."""
    for i, ch, depth, quoted in _scan(text, start):
        if ch == ")" and depth == 0 and not quoted:
            return i
    raise ClusterSchemaError(f"unbalanced parentheses in {text[start:start + 60]!r}…")


def _split_top_level(text: str) -> list[str]:
    """Comma-separated parts outside parentheses and quotes (ALTER commands)."""
    parts, last = [], 0
    for i, ch, depth, quoted in _scan(text):
        if ch == "," and depth == 0 and not quoted:
            parts.append(text[last:i].strip())
            last = i + 1
    parts.append(text[last:].strip())
    return [p for p in parts if p]


_TABLE_LOOKUP = re.compile(r"(\bname\s*=\s*')(\w+)(')")


class ClusterDdl:
    """A store as the post-migration steps (the events TTL) see it in cluster mode: their
    DDL is rendered for the cluster, and their `system.tables` lookups of a sharded table
    read its local table — the one whose engine holds the TTL."""

    def __init__(self, store: object, cluster: str, database: str) -> None:
        self._store = store
        self.cluster = check_identifier(cluster, "cluster name")
        self.database = check_identifier(database, "database name")

    def command(self, sql: str, parameters: dict | None = None) -> object:
        result = None
        for statement in render_statement(sql, self.cluster, self.database):
            result = self._store.command(statement, parameters)  # type: ignore[attr-defined]
        return result

    def query(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self._store.query(local_lookups(sql), parameters)  # type: ignore[attr-defined]


def local_lookups(sql: str) -> str:
    """`name = 't'` in a `system.tables` query becomes `name = 't_local'`."""
    if "system.tables" not in sql:
        return sql
    return _TABLE_LOOKUP.sub(lambda m: f"{m.group(1)}{local_name(m.group(2))}{m.group(3)}", sql)
