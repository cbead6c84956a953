"""The gRPC server: its assembly (app), interceptors, token auth, TLS, stream limits and
the pod probe."""
