"""What an auditor's SQL may do, decided on ClickHouse's own parse tree (pure).

`Query.Sql` sends the statement to `EXPLAIN AST` (which parses and never runs it) and
hands the printed tree here. A statement passes only if every part of it is known safe:

- the statement is a read: SELECT (with WITH / UNION / INTERSECT / EXCEPT), DESCRIBE,
  or SHOW TABLES of the current database;
- no INTO OUTFILE, FORMAT or SETTINGS clause (the server sets the limits and the format);
- every function is on the allowlist (`functions.txt`, this engine version's
  functions minus those that reach the host, the network, other databases, processes or
  the clock: see DENIED_* below); a function the list does not name is refused, so a
  newer engine's functions stay closed until reviewed;
- table functions are only the generators in TABLE_FUNCTIONS (no file, url, s3, remote,
  executable, python, ...);
- tables are those of the service's own database, plus a few harmless system tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from headwater.errors import SqlRefused

# Read statements accepted at the root of the parse tree.
READ_ROOTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "DescribeQuery",
                        "ShowTables"})
# Generators that read nothing outside the query itself.
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series",
                             "generateSeries", "values", "primes"})
SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt"})
# Written by the parser for syntax (x -> ...), not listed in system.functions.
PARSER_FUNCTIONS = frozenset({"lambda"})
# `x IN name`: the right-hand identifier names a table.
_IN_FUNCTIONS = frozenset({"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn",
                           "globalNullIn", "globalNotNullIn"})

# Why a function is refused, by system.functions category and by name. The test
# tests/security/test_sql_sandbox.py checks every function of the engine is either allowed
# (functions.txt) or refused here, so an engine upgrade cannot open a hole silently.
DENIED_CATEGORIES = {
    "Introspection": "reads the server's memory, symbols or threads",
    "Internal": "internal to the engine",
    "AI": "calls a model over the network",
    "Dictionary": "reads dictionaries, whose sources are outside the database",
    "Embedded Dictionary": "reads the server's geobase files",
}
DENIED_FUNCTIONS = {
    "file": "reads a file of the host",
    "filesystemAvailable": "host filesystem", "filesystemCapacity": "host filesystem",
    "filesystemUnreserved": "host filesystem",
    "hostName": "host identity", "FQDN": "host identity", "getOSKernelVersion": "host identity",
    "serverUUID": "host identity", "buildId": "host identity", "displayName": "host identity",
    "uptime": "host state", "zookeeperSessionUptime": "host state",
    "hasThreadFuzzer": "host state",
    "getServerPort": "server configuration", "tcpPort": "server configuration",
    "getServerSetting": "server configuration", "getMergeTreeSetting": "server configuration",
    "getMacro": "server configuration", "showCertificate": "the server's TLS certificate",
    "getClientHTTPHeader": "other clients' request headers",
    "currentRequestURL": "the request", "currentHandler": "the request",
    "currentUser": "accounts", "authenticatedUser": "accounts", "currentProfiles": "accounts",
    "currentRoles": "accounts", "defaultProfiles": "accounts", "defaultRoles": "accounts",
    "enabledProfiles": "accounts", "enabledRoles": "accounts", "pgGetUserById": "accounts",
    "hasColumnInTable": "looks into other databases",
    "pgTableIsVisible": "looks into other databases",
    "getMaxTableNameLengthForDatabase": "looks into other databases",
    "joinGet": "reads Join tables by name", "joinGetOrNull": "reads Join tables by name",
    "sleep": "holds the server without work", "sleepEachRow": "holds the server without work",
    "naiveBayesClassifier": "reads a model file of the host",
    "naiveBayesClassifierWithProb": "reads a model file of the host",
    "naiveBayesClassifierWithAllProbs": "reads a model file of the host",
    "catboostEvaluate": "runs a model library of the host",
}

_LINE = re.compile(r"^( *)(\S+)(?: (.*))?$")
_PLAIN_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?: \(alias [^()]*\))?(?: \(children \d+\))?$")
_TABLE_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)"
                         r"(?: \(alias [^()]*\))?(?: \(children \d+\))?$")


@dataclass(frozen=True)
class SqlLimits:
    """Server-side bounds of one statement (settings sql_*; docs/configuration.md)."""

    seconds: float = 30.0
    memory_bytes: int = 1 << 30
    max_rows: int = 100_000
    concurrent: int = 2



@dataclass
class Node:
    kind: str
    text: str
    children: list[Node] = field(default_factory=list)


def parse_tree(lines: list[str]) -> Node:
    """The tree `EXPLAIN AST` prints (one node a line, one space of indent per level)."""
    root = Node("", "")
    stack: list[tuple[int, Node]] = [(-1, root)]
    for line in lines:
        m = _LINE.match(line.rstrip("\n"))
        if m is None:
            raise SqlRefused(f"unexpected parse tree line {line[:80]!r}")
        depth, node = len(m.group(1)), Node(m.group(2), m.group(3) or "")
        while stack[-1][0] >= depth:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((depth, node))
    if len(root.children) != 1:
        raise SqlRefused("one statement only")
    return root.children[0]


@cache
def allowed_functions() -> frozenset[str]:
    """The reviewed allowlist shipped with the package (case-insensitive names lowercased)."""
    text = resources.files("headwater.query_service.sql").joinpath("functions.txt").read_text()
    return frozenset(ln.strip() for ln in text.splitlines()
                     if ln.strip() and not ln.startswith("#"))


def function_allowed(name: str) -> bool:
    allowed = allowed_functions()
    return name in PARSER_FUNCTIONS or name in allowed or f"ci:{name.lower()}" in allowed


def check_statement(tree_lines: list[str], database: str) -> str:
    """Raise SqlRefused unless the statement (as `EXPLAIN AST` printed it) is a safe read
    of `database`; return its kind (one of READ_ROOTS)."""
    root = parse_tree(tree_lines)
    if root.kind not in READ_ROOTS:
        raise SqlRefused(f"only reads are accepted (SELECT, DESCRIBE, SHOW TABLES); this "
                         f"statement is a {root.kind.removesuffix('Query') or 'statement'}")
    for child in root.children:
        if child.kind == "Literal":
            raise SqlRefused("INTO OUTFILE is refused: results come back to the caller only")
        # the driver's own FORMAT Native closes every statement; any other is the caller's
        if child.kind == "Identifier" and child.text != "Native" and root.kind != "ShowTables":
            raise SqlRefused("a FORMAT clause is refused: choose the output format in the "
                             "client (`headwater sql --format`)")
    if root.kind == "ShowTables" and [c for c in root.children if c.kind == "Identifier"][:-1]:
        raise SqlRefused("SHOW TABLES FROM another database is refused")
    _walk(root, None, database)
    return root.kind


def _walk(node: Node, parent: Node | None, database: str) -> None:
    if node.kind == "Set":
        raise SqlRefused("a SETTINGS clause is refused: the server sets the query's limits")
    if node.kind == "Function":
        name = _name(node.text, _PLAIN_NAME, "function")
        if parent is not None and parent.kind == "TableExpression":
            if name not in TABLE_FUNCTIONS:
                raise SqlRefused(f"table function {name}() is refused; allowed: "
                                 f"{', '.join(sorted(TABLE_FUNCTIONS))}")
        elif not function_allowed(name):
            reason = DENIED_FUNCTIONS.get(name, "not on the reviewed allowlist")
            raise SqlRefused(f"function {name}() is refused ({reason})")
        if name in _IN_FUNCTIONS:
            args = node.children[0].children if node.children else []
            if len(args) == 2 and args[1].kind == "Identifier":
                _check_table(_name(args[1].text, _TABLE_NAME, "table"), database)
    elif node.kind == "TableIdentifier":
        _check_table(_name(node.text, _TABLE_NAME, "table"), database)
    for child in node.children:
        _walk(child, node, database)


def _name(text: str, pattern: re.Pattern[str], what: str) -> str:
    m = pattern.match(text)
    if m is None:
        raise SqlRefused(f"{what} names must be plain identifiers ([A-Za-z_][A-Za-z0-9_]*); "
                         f"got {text[:80]!r}")
    return m.group(1)


def _check_table(name: str, database: str) -> None:
    """Tables of `database` (unqualified names resolve there) and SYSTEM_TABLES."""
    db, dot, table = name.partition(".")
    if not dot or db == database:
        return
    if db == "system" and table in SYSTEM_TABLES:
        return
    raise SqlRefused(f"table {name} is outside the {database} database; allowed: its tables "
                     f"and system.{{{', '.join(sorted(SYSTEM_TABLES))}}}")


def denial(name: str, categories: str) -> str | None:
    """Why the function `name` of system.functions is refused, or None when it is allowed."""
    for category in categories.split(","):
        if category.strip() in DENIED_CATEGORIES:
            return DENIED_CATEGORIES[category.strip()]
    return DENIED_FUNCTIONS.get(name)


def allowlist(functions: list[tuple[str, int, str, str]]) -> list[str]:
    """The allowlist lines for system.functions rows (name, case_insensitive, alias_to,
    categories): every function not denied, an alias denied with what it stands for;
    case-insensitive names as `ci:<lowercase>`."""
    categories = {name: cats for name, _, _, cats in functions}
    lines = []
    for name, case_insensitive, alias_to, cats in functions:
        if denial(name, cats) or (alias_to and denial(alias_to, categories.get(alias_to, ""))):
            continue
        lines.append(f"ci:{name.lower()}" if case_insensitive else name)
    return sorted(set(lines))


SYSTEM_FUNCTIONS_SQL = ("SELECT name, case_insensitive, alias_to, categories FROM "
                        "system.functions WHERE origin = 'System' ORDER BY name")


def main() -> None:
    """Print a fresh allowlist from the installed engine (review the diff before shipping)."""
    import tempfile

    import clickhouse_connect

    with tempfile.TemporaryDirectory() as scratch:
        client = clickhouse_connect.get_client(dsn=f"chdb://{scratch}")
        rows = [tuple(r) for r in client.query(SYSTEM_FUNCTIONS_SQL).result_rows]
        client.close()
    print("# Functions Query.Sql accepts: generated by "
          "`python -m headwater.query_service.sql.policy`, reviewed (see sql/policy.py)")
    print("\n".join(allowlist(rows)))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
