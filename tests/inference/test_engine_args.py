"""The engine's memory request on this CPU machine: small by default, the operator's if given."""

from __future__ import annotations

import shlex

import pytest

from loomstack_inference.engine import memory_args
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
