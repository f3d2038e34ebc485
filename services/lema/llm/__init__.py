"""LLM backends behind one batched interface (`base.LLMBackend`), chosen by `factory.create_backend`."""
