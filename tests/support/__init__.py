"""Helpers shared by the test folders (pipelines, servers, PKI, oracles, manifests)."""
