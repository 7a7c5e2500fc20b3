"""Loomstack training service: fine-tuning jobs (LoRA with Unsloth)."""

from loomstack_kit.grpc_core import apply_defaults

# Before any module of this package imports grpc: C-core reads its settings at import.
apply_defaults()
