"""The model registry and the engines that serve models (with their heartbeats).

Base models (no parent) are the installation's and every project sees them. A fine-tuned model
(an adapter) belongs to the project that registered it: another project is told it does not
exist, exactly as for an unknown id, so a refusal never confirms that it does. An admin caller
(project None) sees every model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loomstack_kit.database import write_transaction
from loomstack_kit.errors import AlreadyExists, FailedPrecondition, NotFound

from .tables import engines, models

FRESH_SECONDS = 30.0


def _visible_to(project: str | None) -> sa.ColumnElement[bool]:
    """The models a project may see and use: base models, and its own adapters."""
    if project is None:
        return sa.true()
    return sa.or_(models.c.parent.is_(None), models.c.owned_by == project)


def model_not_found(model_id: str, param: str = "model") -> NotFound:
    """The one error for a model a caller may not see: unknown and another project's alike."""
    return NotFound(
        f"the model {model_id!r} does not exist or you do not have access to it",
        param=param,
        code="model_not_found",
    )


@dataclass(frozen=True)
class ModelInfo:
    """A registered model with its live serving state."""

    id: str
    parent: str | None
    source: str
    owned_by: str
    max_model_len: int
    created_at: float
    ready_engines: int
    output_tokens_per_second: float


class Registry:
    """Models and engines in the inference database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register_model(
        self,
        model_id: str,
        source: str,
        max_model_len: int,
        *,
        parent: str | None = None,
        owned_by: str = "system",
    ) -> None:
        """Adds or updates a model (idempotent)."""
        with write_transaction(self.engine) as conn:
            exists = conn.execute(sa.select(models.c.id).where(models.c.id == model_id)).first()
            values = {
                "parent": parent,
                "source": source,
                "owned_by": owned_by,
                "max_model_len": max_model_len,
            }
            if exists:
                conn.execute(models.update().where(models.c.id == model_id).values(**values))
            else:
                conn.execute(models.insert().values(id=model_id, created_at=time.time(), **values))

    def register_adapter(
        self, model_id: str, source: str, max_model_len: int, *, parent: str, owned_by: str
    ) -> None:
        """Adds an adapter of `owned_by`, or updates one it already owns (a retried
        registration). AlreadyExists when the id is a base model or another project's
        adapter: taking it over would serve the caller's weights under that model's name."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(models.c.parent, models.c.owned_by).where(models.c.id == model_id)
            ).first()
            values = {
                "parent": parent,
                "source": source,
                "owned_by": owned_by,
                "max_model_len": max_model_len,
            }
            if row is None:
                conn.execute(models.insert().values(id=model_id, created_at=time.time(), **values))
            elif row.parent is not None and row.owned_by == owned_by:
                conn.execute(models.update().where(models.c.id == model_id).values(**values))
            else:
                raise AlreadyExists(
                    f"the model id {model_id!r} is taken: register the adapter under another id",
                    param="model_id",
                    code="model_exists",
                )

    def heartbeat(
        self,
        engine_id: str,
        address: str,
        served: list[str],
        *,
        ready: bool,
        tokens_per_second: float = 0.0,
        requests_per_second: float = 0.0,
        started_at: float = 0.0,
    ) -> None:
        """Upserts this engine's row; a row older than FRESH_SECONDS counts as down."""
        now = time.time()
        values = {
            "address": address,
            "models_json": orjson.dumps(served).decode(),
            "heartbeat_at": now,
            "ready": ready,
            "output_tokens_per_second": tokens_per_second,
            "requests_per_second": requests_per_second,
        }
        with write_transaction(self.engine) as conn:
            updated = conn.execute(
                engines.update().where(engines.c.id == engine_id).values(**values)
            ).rowcount
            if not updated:
                conn.execute(
                    engines.insert().values(id=engine_id, started_at=started_at or now, **values)
                )

    def remove_engine(self, engine_id: str) -> None:
        """Drops this engine's row (graceful stop)."""
        with write_transaction(self.engine) as conn:
            conn.execute(engines.delete().where(engines.c.id == engine_id))

    def list_models(self, project: str | None) -> list[ModelInfo]:
        """The models `project` may see (every model for an admin, None), with their ready
        engines and summed throughput."""
        return self._infos(_visible_to(project))

    def model_ids(self, project: str | None) -> set[str]:
        """The ids of the models `project` may use."""
        with self.engine.connect() as conn:
            return {r.id for r in conn.execute(sa.select(models.c.id).where(_visible_to(project)))}

    def check_visible(self, model_id: str, project: str | None, param: str = "model") -> None:
        """NotFound unless `project` may use `model_id`."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models.c.id).where(models.c.id == model_id, _visible_to(project))
            ).first()
        if row is None:
            raise model_not_found(model_id, param)

    def _infos(self, where: sa.ColumnElement[bool]) -> list[ModelInfo]:
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(models).where(where).order_by(models.c.created_at)).all()
            live = conn.execute(
                sa.select(engines.c.models_json, engines.c.output_tokens_per_second).where(
                    engines.c.heartbeat_at > now - FRESH_SECONDS, engines.c.ready.is_(True)
                )
            ).all()
        served = [(set(orjson.loads(e.models_json)), e.output_tokens_per_second) for e in live]
        out = []
        for r in rows:
            mine = [tps for names, tps in served if r.id in names]
            out.append(
                ModelInfo(
                    r.id,
                    r.parent,
                    r.source,
                    r.owned_by,
                    r.max_model_len,
                    r.created_at,
                    len(mine),
                    sum(mine),
                )
            )
        return out

    def _serving(self, model_id: str, column: sa.Column[Any]) -> list[Any]:
        """`column` of each ready engine (fresh heartbeat) that serves `model_id`."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(column, engines.c.models_json).where(
                    engines.c.heartbeat_at > now - FRESH_SECONDS, engines.c.ready.is_(True)
                )
            ).all()
        return [r[0] for r in rows if model_id in orjson.loads(r.models_json)]

    def engine_addresses(self, model_id: str) -> list[str]:
        """Addresses of the ready engines serving `model_id` (fresh heartbeat)."""
        return [str(a) for a in self._serving(model_id, engines.c.address)]

    def request_rate(self, model_id: str) -> float:
        """Requests per second the ready engines serving `model_id` (fresh heartbeat) measured,
        summed: what a batch's start and finish estimates divide by."""
        return float(sum(self._serving(model_id, engines.c.requests_per_second)))

    def adapters_of(self, base_model: str) -> dict[str, str]:
        """The LoRA adapters registered for `base_model`: name → adapter directory."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(models.c.id, models.c.source).where(models.c.parent == base_model)
            ).all()
        return {r.id: r.source for r in rows}

    def delete_model(self, model_id: str, project: str | None) -> None:
        """Removes an adapter its project owns (any adapter for an admin, `project` None).

        NotFound for an unknown id or another project's adapter, FailedPrecondition for a base
        model (the engines' own model: only a deployment change removes it).
        """
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                sa.select(models.c.parent).where(models.c.id == model_id, _visible_to(project))
            ).first()
            if row is None:
                raise model_not_found(model_id)
            if row.parent is None:
                raise FailedPrecondition(
                    f"{model_id!r} is a base model; only fine-tuned models (adapters) can be "
                    "deleted",
                    param="model",
                )
            conn.execute(models.delete().where(models.c.id == model_id))

    def get_model(self, model_id: str, project: str | None, param: str = "model") -> ModelInfo:
        """One model `project` may see, or NotFound."""
        found = self._infos(sa.and_(models.c.id == model_id, _visible_to(project)))
        if not found:
            raise model_not_found(model_id, param)
        return found[0]
