"""Lineage: the graph over the stored lineage tables, the OpenLineage export, and
forgetting targets."""
