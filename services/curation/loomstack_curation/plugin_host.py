"""The plugins the curation service hosts: loading, their databases, what they contribute here.

Curation enables the plugins named in `LOOMSTACK_CURATION_PLUGINS` and takes from each its
schemas (in its namespace), rating scales, parsers, exporters, result handlers, its own
database (migrated with its own version table before anything of it runs), its gRPC services
and its loops. A plugin that fails to load or to migrate is reported (`statuses`) and left
out; one listed in `LOOMSTACK_CURATION_PLUGINS_REQUIRED` stops the service instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.plugins import (
    CurationContext,
    Exporter,
    Plugin,
    PluginError,
    PluginSet,
    PluginStatus,
    load_plugins,
)

from .registry import Vocabulary
from .settings import CurationSettings

log = logging.getLogger("loomstack_curation")


@dataclass
class PluginHost:
    """The loaded plugins and their statuses, with each plugin's database engine."""

    plugins: list[Plugin] = field(default_factory=list)
    statuses: list[PluginStatus] = field(default_factory=list)
    required: frozenset[str] = frozenset()
    databases: dict[str, Engine] = field(default_factory=dict)

    @classmethod
    def load(
        cls, settings: CurationSettings, loader: Callable[..., PluginSet] = load_plugins
    ) -> PluginHost:
        """The enabled plugins (PluginError when a required one cannot be loaded)."""
        found = loader(settings.enabled_plugins(), settings.required_plugins())
        return cls(
            plugins=list(found.loaded),
            statuses=list(found.statuses),
            required=frozenset(settings.required_plugins()),
        )

    def _fail(self, plugin: Plugin, reason: str) -> None:
        """Takes a loaded plugin out, reporting why (or stops the service if it is required)."""
        log.error("plugin left out", extra={"plugin": plugin.name, "reason": reason})
        if plugin.name in self.required:
            raise PluginError(f"required plugin {plugin.name!r}: {reason}")
        self.plugins = [p for p in self.plugins if p.name != plugin.name]
        self.statuses = [
            replace(s, state="failed", reason=reason, contributions={})
            if s.name == plugin.name
            else s
            for s in self.statuses
        ]

    def migrate(
        self, home: Path, environ: Mapping[str, str] | None = None, *, strict: bool = False
    ) -> None:
        """Brings every plugin database to its newest revision; a plugin whose migration fails
        is left out (strict: PluginError instead, for the `migrate` command)."""
        env = os.environ if environ is None else environ
        for plugin in list(self.plugins):
            if plugin.database is None:
                continue
            url = plugin.database.url(home, env)
            try:
                migrate(url, str(plugin.database.migrations), plugin.database.version_table)
            except Exception as exc:  # its database or its migrations: the plugin is out
                reason = f"migrating its database failed: {type(exc).__name__}: {exc}"
                if strict:
                    raise PluginError(f"plugin {plugin.name!r}: {reason}") from exc
                self._fail(plugin, reason)

    def open_databases(self, home: Path, environ: Mapping[str, str] | None = None) -> None:
        """An engine per plugin database (after `migrate`)."""
        env = os.environ if environ is None else environ
        for plugin in self.plugins:
            if plugin.database is not None and plugin.name not in self.databases:
                self.databases[plugin.name] = create_db_engine(plugin.database.url(home, env))

    def close(self) -> None:
        """Disposes the plugins' engines."""
        for engine in self.databases.values():
            engine.dispose()
        self.databases.clear()

    # ---- contributions ------------------------------------------------------------------------

    def registrations(self, contexts: Mapping[str, CurationContext]) -> list[Any]:
        """The gRPC services the plugins add (a plugin whose builder raises is left out)."""
        found: list[Any] = []
        for plugin in list(self.plugins):
            if plugin.grpc_services is None:
                continue
            try:
                found += list(plugin.grpc_services(contexts[plugin.name]))
            except Exception as exc:  # plugin code
                self._fail(plugin, f"its gRPC services failed: {type(exc).__name__}: {exc}")
        return found

    def loops(self, contexts: Mapping[str, CurationContext]) -> list[tuple[str, Any]]:
        """(plugin, coroutine) for every loop the plugins run."""
        found: list[tuple[str, Any]] = []
        for plugin in list(self.plugins):
            if plugin.loops is None:
                continue
            try:
                found += [(plugin.name, loop) for loop in plugin.loops(contexts[plugin.name])]
            except Exception as exc:  # plugin code
                self._fail(plugin, f"its loops failed to start: {type(exc).__name__}: {exc}")
        return found

    def vocabulary(self) -> Vocabulary:
        """Every plugin's rating scales and parsers."""
        scales: dict[str, list[str]] = {}
        parsers: dict[str, Any] = {}
        for plugin in self.plugins:
            scales.update({k: list(v) for k, v in plugin.ratings.items()})
            parsers.update(plugin.parsers)
        return Vocabulary(scales=scales, parsers=parsers)

    def schema_directories(self) -> dict[Path, str]:
        """Each plugin's schema directory → the plugin (its ids' namespace)."""
        return {Path(p.schemas): p.name for p in self.plugins if p.schemas is not None}

    def exporters(self) -> dict[str, Exporter]:
        """The snapshot exporters, by name."""
        return {e.name: e for p in self.plugins for e in p.exporters}

    def exporter_plugin(self, name: str) -> str:
        """The plugin an exporter belongs to."""
        return name.partition(".")[0]

    def status_list(self) -> list[PluginStatus]:
        """Every plugin this service knows about, by name."""
        return sorted(self.statuses, key=lambda s: s.name)
