"""The demo: the whole flow on real data (run), its data files (data) and its trainer (train)."""
