"""The query side: gRPC services, the embedded server and the `headwater` command line."""
