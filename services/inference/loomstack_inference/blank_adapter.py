"""A LoRA adapter that changes nothing: B matrices of zeros on the usual Llama target modules.

vLLM loads and applies it like any trained adapter (the same LoRA kernels, the same cost per
token) while the model answers exactly as the base does. The benchmarks time LoRA serving with
it and the tests route requests to a fine-tuned model without training one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The training service's default targets (`LOOMSTACK_TRAINING_DEFAULT_LORA_TARGET_MODULES`).
DEFAULT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(config: dict[str, Any], module: str) -> tuple[int, int]:
    """(in_features, out_features) of a Llama layer's linear module."""
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }[module]


def write_blank_adapter(
    base_model: Path, target: Path, *, rank: int = 16, modules: tuple[str, ...] = DEFAULT_MODULES
) -> Path:
    """Writes the adapter (PEFT layout: adapter_config.json + adapter_model.safetensors) for the
    Llama-architecture model in `base_model` into `target`; returns `target`."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((base_model / "config.json").read_text())
    layers = int(config["num_hidden_layers"])
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for module in modules:
            group = (
                "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            )
            prefix = f"base_model.model.model.layers.{i}.{group}.{module}"
            fan_in, fan_out = _shapes(config, module)
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=generator) * 0.01
            )
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(fan_out, rank)
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "adapter_model.safetensors"))
    (target / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(base_model),
                "r": rank,
                "lora_alpha": rank,
                "lora_dropout": 0.0,
                "target_modules": list(modules),
                "bias": "none",
                "fan_in_fan_out": False,
                "inference_mode": True,
            }
        )
    )
    return target
