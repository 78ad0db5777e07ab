"""repwise server: gRPC services for accounts, catalog, workout logs and training."""
