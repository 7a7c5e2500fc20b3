"""The plugins' own commands: `loomstack <plugin> ...` for each entry point in the group
`loomstack.cli` (a builder `(CliContext) -> typer.Typer`; only those `LOOMSTACK_PLUGINS` names,
when it is set).

Each plugin's group is lazy: its builder is imported only when one of its commands (or its
`--help`) runs, so `loomstack batch ...` never pays for importing a plugin. Its commands speak
to the gateway through the `CliContext` given here: the CLI's base URL, key and one-line errors.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from typing import Any

import typer
from typer.core import TyperGroup

from loomstack_kit.plugins import CLI_ENTRY_POINT_GROUP

from .gateway_client import CliError, call


class GatewayCliContext:
    """The kit's CliContext on the CLI's gateway client."""

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return call(method, path, **kwargs).json()

    def print_json(self, body: Any) -> None:
        print(json.dumps(body, indent=2, ensure_ascii=False))


class LazyPluginGroup(TyperGroup):
    """A plugin's command group, loaded on first use."""

    def __init__(self, point: importlib.metadata.EntryPoint) -> None:
        super().__init__(
            name=point.name, help=f"Commands of the {point.name} plugin.", no_args_is_help=True
        )
        self.point = point
        self._loaded: TyperGroup | None = None

    def _real(self) -> TyperGroup:
        if self._loaded is None:
            try:
                commands = self.point.load()(GatewayCliContext())
            except Exception as exc:  # a plugin's import or builder
                raise CliError(
                    f"the {self.point.name} plugin's commands cannot be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            group = typer.main.get_command(commands)
            if not isinstance(group, TyperGroup):
                raise CliError(f"the {self.point.name} plugin's commands are not a group")
            self._loaded = group
        return self._loaded

    def list_commands(self, ctx: Any) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self._real().get_command(ctx, cmd_name)


def plugin_groups() -> list[LazyPluginGroup]:
    """A lazy group per plugin with commands (the ones `LOOMSTACK_PLUGINS` names, when set)."""
    named = os.environ.get("LOOMSTACK_PLUGINS")
    wanted = None if named is None else {n.strip() for n in named.split(",") if n.strip()}
    points: dict[str, importlib.metadata.EntryPoint] = {}
    for point in importlib.metadata.entry_points(group=CLI_ENTRY_POINT_GROUP):
        if wanted is None or point.name in wanted:
            points.setdefault(point.name, point)
    return [LazyPluginGroup(points[name]) for name in sorted(points)]
