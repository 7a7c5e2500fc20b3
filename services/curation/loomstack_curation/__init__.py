"""Loomstack curation: task schemas, Label Studio tasks with predictions, training examples."""

from loomstack_kit.grpc_core import apply_defaults

# Before any module of this package imports grpc: C-core reads its settings at import.
apply_defaults()
