"""Loomstack inference service: files, batches, the model registry and vLLM engines."""

from loomstack_kit.grpc_core import apply_defaults

# Before any module of this package imports grpc: C-core reads its settings at import.
apply_defaults()
