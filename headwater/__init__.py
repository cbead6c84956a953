"""Headwater: streaming, event-sourced lineage and data attribution for ML systems."""

__version__ = "0.1.0"
