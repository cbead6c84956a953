"""Client plumbing: a channel to a running server, and the store read through its services."""
