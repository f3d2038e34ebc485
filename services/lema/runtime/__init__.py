"""Runtimes that drive the stage workers: embedded (one process), gRPC services and Kafka workers."""
