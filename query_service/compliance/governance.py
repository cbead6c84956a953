"""Data-governance facts computed from lineage (Art. 10(2),(3)): rows per source and split,
a leakage check, and the declarations that are missing.

Leakage: a training row leaks when it depends, through an aggregate op (an op that made
each output row from every row of an input: a mean, a std, an op not understood), on
source rows that also directly feed a test or prediction row. Fitting a normalisation on
all rows before the train/test split does exactly this; fitting it on the training rows
only does not (the test rows then depend on training rows, which is allowed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from headwater.query_service.compliance.model import (
    LeakageCheck,
    LeakageFinding,
    SplitShare,
    SplitStatistics,
)
from headwater.query_service.lineage.graph import LineageGraph
from headwater.stream_processors.lineage_resolve import Trace, trace_each

MAX_ROWS = 200_000  # rows traced per check; above it the check is skipped, saying so


def _traces(graph: LineageGraph, keys: dict[str, np.ndarray]) -> Iterable[Trace]:
    for node, rows in keys.items():
        yield from trace_each(node, rows, graph.op_of, expand=False)


def _direct(traces: Iterable[Trace]) -> dict[str, set[int]]:
    """Source node -> source rows reached row-wise."""
    out: dict[str, set[int]] = defaultdict(set)
    for t in traces:
        for node, rows in t.direct.items():
            out[node].update(int(r) for r in rows)
    return out


def split_statistics(graph: LineageGraph, splits: dict[str, dict[str, np.ndarray]],
                     sources: dict[str, str]) -> SplitStatistics:
    """Per split ("training", "test/prediction"): the source rows it draws on directly, by
    source. `sources`: source node -> source id."""
    out = []
    for split, keys in splits.items():
        direct = _direct(_traces(graph, keys))
        total = sum(len(r) for r in direct.values())
        out.append(SplitShare(split=split, rows=int(sum(len(r) for r in keys.values())),
                              source_rows={sources.get(n, n): len(r)
                                           for n, r in sorted(direct.items())},
                              share={sources.get(n, n): len(r) / total
                                     for n, r in sorted(direct.items())} if total else {}))
    return SplitStatistics(
        splits=out,
        absent=["class balance, missing values and value distributions per source and "
                "split: the SDK records no column values or statistics, so none are "
                "reported (never estimated)"])


def leakage_check(graph: LineageGraph, training: dict[str, np.ndarray],
                  test: dict[str, np.ndarray]) -> LeakageCheck:
    """Training rows that depend through an aggregate on source rows that directly feed
    test or prediction rows (see the module docstring)."""
    n_train = int(sum(len(r) for r in training.values()))
    n_test = int(sum(len(r) for r in test.values()))
    if not n_test:
        return LeakageCheck(status="skipped", detail="no test or prediction rows with "
                            "lineage are recorded: nothing to compare with", training_rows=n_train,
                            test_rows=0, findings=[])
    if n_train + n_test > MAX_ROWS:
        return LeakageCheck(status="skipped", detail=f"more than {MAX_ROWS:,} rows to trace",
                            training_rows=n_train, test_rows=n_test, findings=[])
    test_direct = _direct(_traces(graph, test))
    per_op: dict[tuple[str, str, str], int] = defaultdict(int)
    for t in _traces(graph, training):
        for agg in t.aggregates:
            per_op[(agg.op_id, agg.op_name, agg.node_id)] += 1
    findings = []
    for (op_id, op_name, node), rows in sorted(per_op.items()):
        aggregated = _direct(trace_each(node, np.arange(graph.node(node).rows), graph.op_of,
                                        expand=False))
        shared = sum(len(aggregated.get(src, set()) & test_rows)
                     for src, test_rows in test_direct.items())
        if shared:
            findings.append(LeakageFinding(
                op_id=op_id, op_name=op_name, aggregated_node_id=node, training_rows=rows,
                shared_source_rows=shared,
                detail=f"{rows} training row(s) depend through {op_name} on all rows of "
                       f"{node}, {shared} of whose source rows also directly feed test or "
                       "prediction rows: statistics of the test data reach training"))
    return LeakageCheck(
        status="failed" if findings else "passed",
        detail=(f"{len(findings)} aggregate op(s) carry test rows into training" if findings
                else f"no training row depends through an aggregate on a test or prediction "
                     f"row's source rows ({len(per_op)} aggregate op(s) checked)"),
        training_rows=n_train, test_rows=n_test, findings=findings)
