"""The message bus between stage workers: in-process (`memory`) or Kafka (`kafka`)."""
