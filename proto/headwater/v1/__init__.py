"""Generated protobuf and gRPC modules for the Headwater v1 wire contract (do not edit)."""
