"""Loomstack inference service: files, batches, the model registry and vLLM engines."""
