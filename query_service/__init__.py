"""The query side: what reads the stored lineage, gradients and log, and serves it over gRPC.

    server/       build_server (one service table), interceptors, token auth, TLS, limits, probe
    services/     one gRPC servicer per service of headwater.v1
    client/       a channel to a running server; the store read through its services
    lineage/      the lineage graph, the OpenLineage export, forgetting targets
    attribution/  the attribution engine (I/O) over pure scoring maths; KNN-Shapley
    compliance/   the compliance report: model, builder, HTML, signing, config, log check
    sql/          auditors' read-only SQL: the policy (pure), the allowlist, the reader
    tables.py     one typed row per stored table the query side reads
    settings.py   HEADWATER_* settings

The `headwater` command line is headwater.cli; the demo is headwater.demo."""
