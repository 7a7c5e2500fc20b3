"""The Aris plugin's declaration: what it contributes to curation and to the gateway.

Curation hosts the schemas, rating scales, parser, exporter, result handlers, the Aristotle
database, the ConquestService and the victory reconcile loop; the gateway serves the routes
under `/v1/plugins/aris` and declares the Conquests page.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from loomstack_kit.plugins import CurationContext, Database, Plugin, Routes, UIPage

from .conquests import ConquestStore
from .examples import ARISTOTLE_EXPORTER
from .handlers import RESULT_HANDLERS
from .parser import parse_candidate
from .routes import build_routes
from .servicer import grpc_services
from .terms import PLUGIN, RATINGS
from .victories import VictorySync, reconcile, reconcile_seconds

VERSION = "0.1.0"
HERE = Path(__file__).resolve().parent

DATABASE = Database(
    migrations=HERE / "migrations",
    version_table="alembic_version_aris",
    url_setting="LOOMSTACK_ARIS_DATABASE_URL",
    sqlite_name="aristotle.db",
)


def loops(context: CurationContext) -> Sequence[Coroutine[Any, Any, None]]:
    """The reconcile loop retrying pending VICTORY → gold star syncs
    (`LOOMSTACK_ARIS_RECONCILE_SECONDS`, default 30)."""
    sync = VictorySync(ConquestStore(context.database), context)
    return [reconcile(sync, reconcile_seconds())]


plugin = Plugin(
    name=PLUGIN,
    version=VERSION,
    description="Aris: conquests in the Aristotle database, candidate-evaluation schemas, the "
    "gold star ↔ VICTORY sync, the Aristotle dataset and Eidos exports, the conquest API.",
    schemas=HERE / "schemas",
    ratings=RATINGS,
    parsers={f"{PLUGIN}.candidate": parse_candidate},
    exporters=(ARISTOTLE_EXPORTER,),
    result_handlers=RESULT_HANDLERS,
    routes=Routes(build=build_routes),
    ui=(UIPage(path="/aris/conquests", title="Conquests"),),
    database=DATABASE,
    grpc_services=grpc_services,
    loops=loops,
)
