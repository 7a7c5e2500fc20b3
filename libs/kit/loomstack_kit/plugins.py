"""The plugin contract: what a plugin declares, and how a service finds and loads plugins.

A plugin is an ordinary Python distribution with an entry point in the group
`loomstack.plugins` whose object is a `Plugin` (or a callable returning one). A service loads
the plugins its settings enable (`LOOMSTACK_<SERVICE>_PLUGINS`, names) and takes the
contributions it hosts; the rest of a plugin stays unused there:

- curation hosts schemas, ratings, parsers, exporters, result handlers, the plugin's own
  database, its gRPC services and its loops (the data they touch is curation's);
- the gateway hosts routes (under `/v1/plugins/<name>` unless the plugin names a prefix) and
  the UI pages it declares;
- the `loomstack` CLI mounts its commands as `loomstack <name> ...` from a second entry point,
  in the group `loomstack.cli` (`CLI_ENTRY_POINT_GROUP`): a builder `(CliContext) ->
  typer.Typer`, imported only when its commands run, so no command pays for loading plugins.

A plugin imports the kit and the generated protos, never a service: what it may do in a
service is what the context it is handed offers (`CurationContext`, `RouteContext`), and it
reaches every other service over gRPC. A plugin that fails to load is named with the reason
(`PluginStatus`); the service starts without it unless it is listed as required.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "loomstack.plugins"
CLI_ENTRY_POINT_GROUP = "loomstack.cli"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

Feed = Literal["batches", "curation"]

# The curation feed's event types (curation's events.py writes them).
ANNOTATION_CREATED = "annotation.created"
ANNOTATION_UPDATED = "annotation.updated"
GOLD_SET = "task.gold_set"
GOLD_REMOVED = "task.gold_removed"
SNAPSHOT_CREATED = "snapshot.created"


class PluginError(RuntimeError):
    """A plugin that is required could not be loaded (the service does not start)."""


# ---- what handlers and exporters are handed ----------------------------------------------------


@dataclass(frozen=True)
class FeedEvent:
    """One event of a feed, as a handler sees it.

    batches: `type` is `batch.completed`, `batch.cancelled` or `batch.expired`; `data` has
    `batch_id`, `model`, `input_file_id`, `output_file_id`, `failed_lines` and `metadata` (the
    batch's, a dict).
    curation: `type` is one of the constants above; `data` has `ls_task_id`, `batch_id`,
    `custom_id`, `schema_id`, `schema_version`, `gold`, `ls_annotation_id`, `origin` (who made
    the change: `label_studio`, `api`, `plugin:<name>`, ...) or, for a snapshot, `snapshot_id`.
    """

    feed: Feed
    sequence: int
    type: str
    project: str
    data: Mapping[str, Any]
    created_at: float = 0.0


@dataclass(frozen=True)
class TaskRef:
    """A curation task as a plugin sees it."""

    ls_task_id: int
    ls_project_id: int
    project: str
    batch_id: str
    custom_id: str
    schema_id: str
    schema_version: int
    status: str
    gold: bool
    rating: int | None
    ls_annotation_id: int | None
    answers: Mapping[str, Any]
    data: Mapping[str, Any]


class CurationContext(Protocol):
    """What a plugin may do inside the curation service (all through curation's own code)."""

    plugin: str
    home: Path
    # The SQLAlchemy Engine of the plugin's own database, migrated before the plugin is called
    # (None when it declares no `Database`).
    database: Any

    def queue_import(self, event: FeedEvent, schema_type: str) -> bool:
        """Queues a completed batch's results for import into Label Studio with this schema
        (curation's own import queue; once per batch). False if it was queued already."""
        ...

    def tasks_of_batch(self, project: str, batch_id: str) -> list[TaskRef]:
        """The imported tasks of a batch (empty until its import ran)."""
        ...

    def task(self, project: str, ls_task_id: int) -> TaskRef:
        """One task; loomstack_kit.errors.NotFound if the project has no such task."""
        ...

    def set_gold(self, project: str, ls_task_ids: list[int], gold: bool) -> list[TaskRef]:
        """Gives (or takes) the gold star in Label Studio; the curation feed then carries the
        change with origin `plugin:<name>`."""
        ...

    def file_lines(self, project: str, file_id: str) -> Iterator[Mapping[str, Any]]:
        """The JSON lines of one of the project's files, e.g. a batch's input or output file
        (from the inference service, streamed)."""
        ...


@dataclass(frozen=True)
class ExportRequest:
    """A snapshot built by a plugin exporter: the core filter's fields plus the exporter's own
    options (strings, as the API passes them)."""

    project: str
    schema_id: str
    gold_only: bool
    limit: int
    options: Mapping[str, str]


# ---- the contributions -------------------------------------------------------------------------


Handler = Callable[[FeedEvent, CurationContext], None]


@dataclass(frozen=True)
class ResultHandler:
    """Code run for each event of a feed, at least once, in priority order (lower first).

    It must be idempotent: a crash replays the events after its cursor. An exception retries
    the event with backoff, then parks it in the dead-letter list; the handler's cursor moves on.
    """

    name: str
    handle: Handler
    feed: Feed = "batches"
    priority: int = 100
    events: tuple[str, ...] = ()  # event types it wants; empty for every type


# answer text of the model → answers by question name (curation coerces them to the schema)
Parser = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class Exporter:
    """An extra snapshot format: OpenAI chat examples (lists of messages) for a request.

    Its lines are written as OpenAI chat JSONL, so the training service fine-tunes on them.
    """

    name: str
    export: Callable[[ExportRequest, CurationContext], Iterable[list[dict[str, str]]]]
    description: str = ""
    options: tuple[str, ...] = ()  # the option names it understands; others are refused


@dataclass(frozen=True)
class Routes:
    """HTTP routes the gateway serves: `build(context)` returns a FastAPI APIRouter whose paths
    are relative to `prefix` (default `/v1/plugins/<name>`)."""

    build: Callable[[RouteContext], Any]
    prefix: str = ""


class RouteContext(Protocol):
    """What the gateway hands a plugin's route builder."""

    plugin: str
    timeout: float

    def channel(self, service: Literal["inference", "curation", "training"]) -> Any:
        """The gateway's grpc.aio channel to a service (signed identity per call)."""
        ...

    def metadata(self, request: Any) -> Any:
        """The signed gRPC metadata of the request's caller (project, key)."""
        ...


class CliContext(Protocol):
    """What the `loomstack` CLI hands a plugin's command builder (entry point group
    `loomstack.cli`)."""

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a gateway route (`path` after `/v1`, e.g. `/plugins/<name>/x`),
        with the CLI's base URL and key; an error answer ends the command with its message."""
        ...

    def print_json(self, body: Any) -> None:
        """Prints a JSON answer as the CLI's `--json` options do."""
        ...


@dataclass(frozen=True)
class UIPage:
    """A page of the web UI (mounted by the web UI; declared now)."""

    path: str
    title: str
    assets: Path | None = None


@dataclass(frozen=True)
class Database:
    """The plugin's own tables: Alembic migrations with their own version table, on the URL of
    `url_setting` (an environment variable) or SQLite `<service home>/<sqlite_name>`."""

    migrations: Path
    version_table: str
    url_setting: str
    sqlite_name: str

    def url(self, home: Path, environ: Mapping[str, str]) -> str:
        """The database URL the plugin uses."""
        return environ.get(self.url_setting, "") or f"sqlite:///{home / self.sqlite_name}"


@dataclass(frozen=True)
class Plugin:
    """Everything a plugin contributes (every field optional but the name)."""

    name: str
    version: str = "0"
    description: str = ""
    schemas: Path | None = None  # a directory of schema files; ids start with `<name>.`
    ratings: Mapping[str, Sequence[str]] = field(default_factory=dict)  # `<name>.<scale>`
    parsers: Mapping[str, Parser] = field(default_factory=dict)  # `<name>.<parser>`
    exporters: Sequence[Exporter] = ()  # names `<name>.<format>`
    result_handlers: Sequence[ResultHandler] = ()
    routes: Routes | None = None
    ui: Sequence[UIPage] = ()
    database: Database | None = None
    # Called once in curation with its context: gRPC servicer registrations (the kit's
    # `Registration`) the curation server adds, and coroutines it runs (e.g. a reconcile loop).
    grpc_services: Callable[[CurationContext], Sequence[Any]] | None = None
    loops: Callable[[CurationContext], Sequence[Any]] | None = None

    def contributions(self) -> dict[str, list[str]]:
        """What it contributes, by type (the names `GET /v1/plugins` lists)."""
        found: dict[str, list[str]] = {}
        if self.schemas is not None:
            found["schemas"] = sorted(p.stem for p in _schema_files(self.schemas))
        if self.ratings:
            found["ratings"] = sorted(self.ratings)
        if self.parsers:
            found["parsers"] = sorted(self.parsers)
        if self.exporters:
            found["exporters"] = [e.name for e in self.exporters]
        if self.result_handlers:
            found["result_handlers"] = [
                h.name for h in sorted(self.result_handlers, key=lambda h: h.priority)
            ]
        if self.routes is not None:
            found["routes"] = [self.route_prefix]
        if self.ui:
            found["ui"] = [p.path for p in self.ui]
        if self.database is not None:
            found["database"] = [self.database.version_table]
        return found

    @property
    def route_prefix(self) -> str:
        """Where its routes are served."""
        if self.routes is not None and self.routes.prefix:
            return "/" + self.routes.prefix.strip("/")
        return f"/v1/plugins/{self.name}"

    def check(self) -> None:
        """ValueError naming the first contribution that breaks the naming rules."""
        if not NAME.match(self.name):
            raise ValueError(
                f"plugin name {self.name!r} must be 1-32 lower-case letters, digits or _"
            )
        own = self.name + "."
        for kind, names in (
            ("rating", list(self.ratings)),
            ("parser", list(self.parsers)),
            ("exporter", [e.name for e in self.exporters]),
        ):
            for name in names:
                if not name.startswith(own) or len(name) == len(own):
                    raise ValueError(f"{kind} {name!r} must be named {own}<name>")
        handlers = [h.name for h in self.result_handlers]
        if len(set(handlers)) != len(handlers):
            raise ValueError("result handler names must be unique")
        if self.schemas is not None and not Path(self.schemas).is_dir():
            raise ValueError(f"schemas directory {self.schemas} does not exist")


def _schema_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if p.suffix in (".yaml", ".yml", ".json"))


# ---- finding and loading -----------------------------------------------------------------------

State = Literal["loaded", "failed", "disabled"]


@dataclass(frozen=True)
class PluginStatus:
    """One installed (or asked-for) plugin in one service."""

    name: str
    state: State
    version: str = ""
    description: str = ""
    reason: str = ""
    required: bool = False
    contributions: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass
class PluginSet:
    """The plugins a service loaded, and the status of every one it knows about."""

    loaded: list[Plugin] = field(default_factory=list)
    statuses: list[PluginStatus] = field(default_factory=list)

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self.loaded)

    def get(self, name: str) -> Plugin | None:
        """A loaded plugin by name."""
        return next((p for p in self.loaded if p.name == name), None)


def installed() -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of the installed plugins, by name."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point)
    return found


def load_plugins(
    enabled: Iterable[str],
    required: Iterable[str] = (),
    *,
    entry_points: Mapping[str, importlib.metadata.EntryPoint] | None = None,
) -> PluginSet:
    """Loads the enabled plugins; PluginError if a required one cannot be loaded.

    Installed plugins that are not enabled are listed as `disabled`; an enabled one that is
    not installed, raises on import, or is not a valid `Plugin` is `failed` with the reason and
    named in the log.
    """
    points = dict(installed() if entry_points is None else entry_points)
    wanted = list(dict.fromkeys(n.strip() for n in enabled if n.strip()))
    must = {n.strip() for n in required if n.strip()}
    result = PluginSet()
    for name in wanted:
        point = points.get(name)
        try:
            if point is None:
                known = ", ".join(sorted(points)) or "none"
                raise LookupError(f"not installed (installed plugins: {known})")
            plugin = _load(point)
        except Exception as exc:  # a plugin's import may raise anything
            reason = str(exc) if isinstance(exc, LookupError) else f"{type(exc).__name__}: {exc}"
            log.error("plugin not loaded", extra={"plugin": name, "reason": reason})
            if name in must:
                raise PluginError(
                    f"required plugin {name!r} could not be loaded: {reason}"
                ) from exc
            result.statuses.append(
                PluginStatus(name=name, state="failed", reason=reason, required=name in must)
            )
            continue
        result.loaded.append(plugin)
        result.statuses.append(
            PluginStatus(
                name=name,
                state="loaded",
                version=plugin.version,
                description=plugin.description,
                required=name in must,
                contributions=plugin.contributions(),
            )
        )
        log.info("plugin loaded", extra={"plugin": name, "version": plugin.version})
    for name in sorted(set(points) - set(wanted)):
        result.statuses.append(PluginStatus(name=name, state="disabled"))
    missing = must - set(wanted)
    if missing:
        raise PluginError(f"required plugins {sorted(missing)} are not enabled")
    return result


def _load(point: importlib.metadata.EntryPoint) -> Plugin:
    obj = point.load()
    plugin = obj() if callable(obj) and not isinstance(obj, Plugin) else obj
    if not isinstance(plugin, Plugin):
        raise TypeError(
            f"entry point {point.value!r} gave {type(plugin).__name__}, "
            "not a loomstack_kit.plugins.Plugin"
        )
    if plugin.name != point.name:
        raise ValueError(f"entry point {point.name!r} gave a plugin named {plugin.name!r}")
    plugin.check()
    return plugin
