"""Loomstack's HTTP gateway: the OpenAI REST API, served over the inference service's gRPC API."""

from loomstack_kit.grpc_core import apply_defaults

# Before any module of this package imports grpc: C-core reads its settings at import.
apply_defaults()
