"""(Loomstack project, schema version) → Label Studio project, kept in the database.

Each Loomstack project gets its own Label Studio project per schema version, so nothing of one
project is ever imported into, read from or written to another's; the title names both.

`ensure` is idempotent across restarts and crashes: the mapping row is looked up first; a
project created just before a crash (no row yet) is found again by its title and the exact
owner line of its description instead of being created a second time, and only if no
mapping holds it already.

A mapped project is checked in Label Studio before it is used: one that is gone (deleted, or
Label Studio's data wiped) or replaced (its id now holds a project with another title and
owner line, as a wiped Label Studio hands the same ids out again) is forgotten with what we
recorded of it and its batches imported again into a new one (lost_projects.py). Before a new
project is created every mapping is checked, so after a wipe no stale task id of another
project can collide with the new Label Studio's ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction

from . import tables
from .label_config import label_config
from .labelstudio_api import EVENTS, SECRET_HEADER, label_studio_unavailable, unavailable_or_none
from .lost_projects import Forgotten, forget
from .task_schema import TaskSchema

log = logging.getLogger(__name__)

MAX_TITLE = 50  # Label Studio refuses longer project titles


def project_title(project: str, schema: TaskSchema, prefix: str = "") -> str:
    """The Label Studio project's title, unique per (installation, Loomstack project, schema
    version): `<prefix><project>/<schema key> <name>`, with as much of the name as fits Label
    Studio's 50 characters. A longer one is cut and ends in a hash of the whole, so two titles
    never meet however long the names are."""
    title = f"{prefix}{project}/{schema.key}"
    if len(title) > MAX_TITLE:
        whole = json.dumps([prefix, project, schema.key], ensure_ascii=False)
        digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
        tail = f"/{schema.key}~{digest}"
        if len(tail) > MAX_TITLE - 8:
            return f"{title[: MAX_TITLE - 9]}~{digest}"
        return f"{(prefix + project)[: MAX_TITLE - len(tail)]}{tail}"
    rest = MAX_TITLE - len(title) - 1
    return f"{title} {schema.name[:rest]}".rstrip() if rest > 3 else title


def project_marker(project: str, schema: TaskSchema, prefix: str = "") -> str:
    """The line a Label Studio project's description ends with: exactly whose it is. Titles
    alone can meet (a prefix `a/` and project `b`, no prefix and project `a/b`); a project
    found by title after a crash is taken only with this line."""
    return _marker(project, schema.key, prefix)


def _marker(project: str, schema_key: str, prefix: str) -> str:
    whole = json.dumps([prefix, project, schema_key], ensure_ascii=False)
    return f"Loomstack {project} {schema_key} #{hashlib.sha256(whole.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class MappedProject:
    """A Label Studio project of ours: whose it is and which schema version it holds."""

    project: str
    schema_id: str
    schema_version: int
    ls_project_id: int
    title: str
    schema_key: str = ""


class ProjectMap:
    """The (project, schema version) → Label Studio project mapping and the Label Studio calls
    that maintain it."""

    def __init__(
        self,
        engine: Engine,
        client: LabelStudio | None,
        title_prefix: str = "",
        *,
        webhook_url: str = "",
        webhook_secret: str = "",
    ) -> None:
        self.engine = engine
        self.client = client
        self.title_prefix = title_prefix
        # Where Label Studio sends each project's annotation events (empty: no webhook).
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        # The importer and the relocation may ask for the same new project at once.
        self._lock = threading.Lock()

    def title(self, project: str, schema: TaskSchema) -> str:
        """The title of a project's Label Studio project for a schema version."""
        return project_title(project, schema, self.title_prefix)

    def ensure_webhook(self, project_id: int) -> bool:
        """Registers our webhook on a project once (Label Studio's webhooks are per project);
        False when no webhook is configured."""
        if not (self.webhook_url and self.webhook_secret):
            return False
        client = self._client()
        try:
            headers = {SECRET_HEADER: self.webhook_secret}
            ours = [
                h
                for h in client.webhooks.list(project=str(project_id))
                if h.url == self.webhook_url
            ]
            for hook in ours:
                if hook.headers != headers and hook.id is not None:
                    # The secret changed since the webhook was registered.
                    client.webhooks.update(id=hook.id, headers=headers, actions=list(EVENTS))
            if not ours:
                client.webhooks.create(
                    project=project_id,
                    url=self.webhook_url,
                    actions=list(EVENTS),
                    headers=headers,
                    send_payload=True,
                    send_for_all_actions=False,
                    is_active=True,
                )
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        return True

    def lookup(self, project: str, schema: TaskSchema) -> int | None:
        """The Label Studio project of a project's schema version, if one exists already."""
        c = tables.projects.c
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(c.ls_project_id).where(c.project == project, c.schema_key == schema.key)
            ).scalar()

    def by_project_id(self, ls_project_id: int) -> MappedProject | None:
        """Whose a Label Studio project is and which schema version it holds, if it is ours."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tables.projects).where(tables.projects.c.ls_project_id == ls_project_id)
            ).first()
        return _mapped(row) if row else None

    def all(self) -> list[MappedProject]:
        """Every mapped Label Studio project."""
        c = tables.projects.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.projects).order_by(c.project, c.schema_key))
            return [_mapped(r) for r in rows]

    def ensure(self, project: str, schema: TaskSchema) -> int:
        """The Label Studio project of a project's schema version, created the first time (and
        again when the mapped one is gone or replaced in Label Studio)."""
        with self._lock:
            existing = self.lookup(project, schema)
            if existing is not None:
                mapped = self.by_project_id(existing)
                reason = self.lost(mapped) if mapped is not None else None
                if mapped is None or reason is None:
                    return existing
                self._forget(mapped, reason)
            return self._create(project, schema)

    def lost(self, mapped: MappedProject) -> str | None:
        """Why Label Studio no longer has a mapped project as ours, or None when it does: the
        id 404s, or it holds a project with neither the recorded title nor our owner line (a
        project renamed by hand keeps its owner line; one mapped before owner lines, its
        title)."""
        try:
            found: Any = self._client().projects.get(id=mapped.ls_project_id)
        except ApiError as exc:
            if exc.status_code == 404:
                return f"Label Studio has no project {mapped.ls_project_id} any more"
            raise unavailable_or_none(exc) or exc from None
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        marker = _marker(mapped.project, mapped.schema_key, self.title_prefix)
        if found.title == mapped.title or marker in (found.description or ""):
            return None
        return (
            f"Label Studio project {mapped.ls_project_id} is {found.title!r} now, "
            f"not {mapped.title!r}"
        )

    def forget_lost(self) -> list[Forgotten]:
        """Checks every mapped project in Label Studio and forgets the lost ones (their batches
        are imported again into new projects); what was forgotten."""
        with self._lock:
            return self._forget_lost()

    def _forget_lost(self) -> list[Forgotten]:
        forgotten = []
        for mapped in self.all():
            reason = self.lost(mapped)
            if reason is not None:
                forgotten.append(self._forget(mapped, reason))
        return forgotten

    def _forget(self, mapped: MappedProject, reason: str) -> Forgotten:
        with write_transaction(self.engine) as conn:
            dropped = forget(conn, mapped.ls_project_id)
        log.warning(
            "a mapped Label Studio project is lost: its batches are imported again into a new one",
            extra={
                "project": mapped.project,
                "schema": mapped.schema_key,
                "ls_project_id": mapped.ls_project_id,
                "reason": reason,
                "tasks": dropped.tasks,
                "annotations": dropped.annotations,
                "batches": len(dropped.requeued),
            },
        )
        return dropped

    def _create(self, project: str, schema: TaskSchema) -> int:
        client = self._client()
        title = self.title(project, schema)
        marker = project_marker(project, schema, self.title_prefix)
        try:
            listed: Any = client.projects.list(title=title)
            found = [
                int(p.id)
                for p in listed
                if p.title == title and p.id is not None and marker in (p.description or "")
            ]
            # Only a project no mapping holds: one created just before a crash.
            free = [i for i in found if self.by_project_id(i) is None]
            if free:
                project_id = free[0]
            else:
                # A wiped Label Studio reuses ids: no stale record may meet the new ones.
                self._forget_lost()
                created = client.projects.create(
                    title=title,
                    description=_description(schema, marker),
                    label_config=label_config(schema),
                )
                assert created.id is not None
                project_id = int(created.id)
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        holder = self.by_project_id(project_id)
        if holder is not None:
            # Label Studio just gave out this id: the project a mapping names by it is gone.
            self._forget(holder, f"Label Studio gave its id {project_id} to a new project")
        self.ensure_webhook(project_id)
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.projects.insert().values(
                    project=project,
                    schema_key=schema.key,
                    schema_id=schema.id,
                    schema_version=schema.version,
                    ls_project_id=project_id,
                    title=title,
                    created_at=time.time(),
                )
            )
        return project_id

    def retitle(self, mapped: MappedProject, schema: TaskSchema) -> bool:
        """Gives a Label Studio project the title it should have (one mapped before titles
        named the project, or under another prefix); True if it was renamed."""
        title = self.title(mapped.project, schema)
        if mapped.title == title:
            return False
        marker = project_marker(mapped.project, schema, self.title_prefix)
        try:
            self._client().projects.update(
                id=mapped.ls_project_id, title=title, description=_description(schema, marker)
            )
        except Exception as exc:
            raise unavailable_or_none(exc) or exc from None
        with write_transaction(self.engine) as conn:
            conn.execute(
                tables.projects.update()
                .where(tables.projects.c.ls_project_id == mapped.ls_project_id)
                .values(title=title)
            )
        return True

    def _client(self) -> LabelStudio:
        if self.client is None:
            raise label_studio_unavailable(
                "Label Studio is not configured (set LOOMSTACK_CURATION_LABEL_STUDIO_URL)"
            )
        return self.client


def _description(schema: TaskSchema, marker: str) -> str:
    return f"{schema.description}\n\n{marker}" if schema.description else marker


def _mapped(row: sa.Row) -> MappedProject:
    return MappedProject(
        row.project,
        row.schema_id,
        row.schema_version,
        int(row.ls_project_id),
        row.title,
        row.schema_key,
    )
