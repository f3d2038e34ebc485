"""The LEMA stages as plain functions over typed records: no transport, no storage.

sample -> check -> correct -> verify -> evolve -> dataset. Runtimes (embedded, gRPC, Kafka) only move records between
them; an LLM backend and the checker are passed in.
"""
