"""gRPC servicers, one module per service."""
