"""Read-only SQL for auditors: the statement policy (pure), its function allowlist and the
bounded reader."""
