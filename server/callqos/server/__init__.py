"""The callqos server: gRPC service, admission through provider plugins, durable events."""
