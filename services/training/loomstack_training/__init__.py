"""Loomstack training service: fine-tuning jobs (LoRA with Unsloth)."""
