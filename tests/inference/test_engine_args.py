"""The engine's memory request on this CPU machine: small by default, the operator's if given."""

from __future__ import annotations

import shlex

import pytest

from loomstack_inference.engine import VllmEngine, lora_disables_compilation, memory_args
from loomstack_inference.settings import InferenceSettings


def test_a_cpu_engine_asks_for_its_configured_share() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine keeps vLLM's default")
    assert memory_args([], 0.15) == ["--gpu-memory-utilization", "0.15"]
    given = shlex.split("--max-num-seqs 64 --gpu-memory-utilization 0.5")
    assert memory_args(given, 0.15) == []
    assert memory_args(["--gpu-memory-utilization=0.4"], 0.15) == []


def test_the_share_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOMSTACK_INFERENCE_CPU_MEMORY_FRACTION", "1.5")
    with pytest.raises(ValueError, match="cpu_memory_fraction"):
        InferenceSettings()


def _engine(**kwargs: object) -> VllmEngine:
    args: dict[str, object] = {
        "model_path": "/m",
        "served_name": "m",
        "max_model_len": 2048,
        "enforce_eager": False,
        "max_lora_rank": 16,
    }
    return VllmEngine(**(args | kwargs))  # type: ignore[arg-type]


def test_adapters_get_an_engine_of_their_own_where_lora_would_cost_the_base_its_compilation() -> (
    None
):
    """On the CPU backend vLLM runs a LoRA-enabled engine uncompiled, so `auto` keeps the base
    model's engine without LoRA and serves adapters from a second one; with nothing compiled
    (enforce_eager) or on CUDA, one engine serves both."""
    assert lora_disables_compilation()  # this machine's vLLM is the CPU build
    assert _engine().separate_lora
    assert not _engine(enforce_eager=True).separate_lora
    assert not _engine(lora_engine="shared").separate_lora
    assert _engine(enforce_eager=True, lora_engine="separate").separate_lora
    assert not _engine(max_lora_rank=0, lora_engine="separate").separate_lora
    with pytest.raises(ValueError, match="lora_engine"):
        _engine(lora_engine="both")
    base, lora = _engine()._argv(lora=False), _engine()._argv(lora=True)
    assert "--enable-lora" not in base
    assert lora[lora.index("--max-lora-rank") + 1] == "16"


def test_the_lora_engine_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOMSTACK_INFERENCE_LORA_ENGINE", "sometimes")
    with pytest.raises(ValueError, match="lora_engine"):
        InferenceSettings()
