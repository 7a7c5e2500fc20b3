"""The Aris plugin's declaration, schemas, parser and the Aristotle store (on SQLite and
PostgreSQL)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loomstack_aris.conquests import Annotation, ConquestFilter, ConquestStore, NewConquest
from loomstack_aris.parser import parse_candidate
from loomstack_aris.plugin import DATABASE, plugin
from loomstack_aris.terms import (
    PEDIGREE,
    RECOMMENDATION,
    ConquestResult,
    ConquestStatus,
    ConquestType,
)
from loomstack_curation.registry import TaskRegistry, Vocabulary
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import InvalidArgument, NotFound
from loomstack_kit.plugins import load_plugins

# ---- declaration and schemas ------------------------------------------------------------------


def test_plugin_loads_by_its_entry_point_and_passes_check() -> None:
    plugin.check()
    loaded = load_plugins(["aris"])
    assert loaded.get("aris") is plugin
    found = plugin.contributions()
    assert found["result_handlers"] == [
        "parse_conquest",
        "gold_to_victory",
        "import_results",
        "record_analysis",
        "end_conquest",
    ]
    assert found["exporters"] == ["aris.aristotle"]
    assert found["parsers"] == ["aris.candidate"]
    assert found["ratings"] == ["aris.pedigree", "aris.recommendation"]
    assert found["ui"] == ["/aris/conquests"]
    assert found["database"] == ["alembic_version_aris"]
    assert plugin.route_prefix == "/v1/plugins/aris"
    by_priority = {(h.feed, h.name): h.priority for h in plugin.result_handlers}
    assert by_priority == {
        ("batches", "parse_conquest"): 10,
        ("batches", "import_results"): 20,
        ("batches", "record_analysis"): 30,
        ("batches", "end_conquest"): 30,
        ("curation", "gold_to_victory"): 10,
    }


# What the curation service gives the registry when the plugin is enabled (plugin_host.py).
VOCABULARY = Vocabulary(scales=plugin.ratings, parsers=plugin.parsers)


def test_schema_files_validate_with_the_core_registry() -> None:
    assert plugin.schemas is not None
    registry = TaskRegistry.load(plugin.schemas, vocabulary=VOCABULARY, namespaces={})
    assert registry.problems == []
    assert sorted(registry.schemas) == sorted(t.schema_id for t in ConquestType)
    for kind in ConquestType:
        schema = registry.get(kind.schema_id)
        assert schema.version == 1
        assert registry.source(schema).stem == kind.schema_id


def test_candidate_schema_is_the_candidate_evaluation() -> None:
    assert plugin.schemas is not None
    schema = TaskRegistry.load(plugin.schemas, vocabulary=VOCABULARY).get("aris.candidate")
    assert schema.prediction.format == "json"
    assert schema.prediction.parser == "aris.candidate" and schema.parser is not None
    assert schema.question("trajectory").scale == "aris.pedigree"  # type: ignore[union-attr]
    assert list(schema.question("recommendation").options) == list(RECOMMENDATION)  # type: ignore[union-attr]
    for name in ("trajectory", "company_pedigree", "education_pedigree"):
        assert list(schema.question(name).options) == list(PEDIGREE)  # type: ignore[union-attr]
    # the built-in gold star (no boolean question of that name)
    assert schema.gold_question is None and schema.training.gold == "gold"
    assert plugin.ratings["aris.recommendation"] == RECOMMENDATION
    assert plugin.ratings["aris.pedigree"] == PEDIGREE


# ---- the parser -------------------------------------------------------------------------------


def test_parser_takes_a_json_object_embedded_in_prose() -> None:
    text = (
        "I looked at the profile {carefully}. My answer:\n```json\n"
        '{"Recommendation": "strong yes", "Trajectory": "STRONG", "company-pedigree": '
        '"below average", "education pedigree": "Exceptional", "notes": "x"}\n```\nThanks!'
    )
    assert parse_candidate(text) == {
        "recommendation": "Strong Yes",
        "trajectory": "Strong",
        "company_pedigree": "Below Average",
        "education_pedigree": "Exceptional",
    }


def test_parser_leaves_out_what_it_cannot_match() -> None:
    assert parse_candidate('{"recommendation": "Absolutely", "trajectory": "weak"}') == {
        "trajectory": "Weak"
    }
    assert parse_candidate("no JSON here") == {}
    assert parse_candidate('{"unrelated": 1} then {"recommendation": "No"}') == {
        "recommendation": "No"
    }
    assert parse_candidate('{"recommendation": 3}') == {}


# ---- the store --------------------------------------------------------------------------------


def test_migrations_use_their_own_version_table_and_run_twice(aris_url: str) -> None:
    migrate(aris_url, str(DATABASE.migrations), DATABASE.version_table)
    engine = sa.create_engine(aris_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        names = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"aris_conquests", "aris_ml_analysis_rating", "alembic_version_aris"} <= names


def _create(store: ConquestStore, project: str = "p1", **fields: str) -> str:
    new = NewConquest(
        type=fields.pop("type", "CANDIDATE"),
        title=fields.pop("title", "Evaluate Ada"),
        philosopher=fields.pop("philosopher", "socrates@example.com"),
        domain=fields.pop("domain", "example.com"),
        **fields,  # type: ignore[arg-type]
    )
    return store.create(project, new).id


def test_create_and_get(store: ConquestStore) -> None:
    created = store.create(
        "p1", NewConquest(type="cv_parsing", title="Parse", philosopher="plato@example.com")
    )
    assert created.id.startswith("conq_") and len(created.id) == 29
    assert created.project == "p1"
    assert created.type is ConquestType.CV_PARSING
    assert created.status is ConquestStatus.DRAFT
    assert created.result is ConquestResult.PENDING
    assert not created.gold_sync_pending and created.problem == ""
    assert store.get("p1", created.id) == created
    assert store.get(None, created.id) == created  # an admin sees every project


def test_list_filters_and_pages_newest_first(store: ConquestStore) -> None:
    ids = [
        _create(store, philosopher="socrates@example.com"),
        _create(store, type="EMAIL_RESPONSE", philosopher="plato@example.com"),
        _create(store, domain="other.org"),
        _create(store, type="candidate"),
        _create(store),
    ]
    _create(store, "p2")
    store.set_result("p1", ids[3], "victory")

    page = store.list_conquests("p1", size=2)
    assert [c.id for c in page.conquests] == [ids[4], ids[3]]
    seen = [c.id for c in page.conquests]
    while page.next_page_token:
        page = store.list_conquests("p1", size=2, page_token=page.next_page_token)
        seen += [c.id for c in page.conquests]
    assert seen == ids[::-1]

    def listed(**flt: object) -> list[str]:
        return [c.id for c in store.list_conquests("p1", ConquestFilter(**flt)).conquests]  # type: ignore[arg-type]

    assert listed(type=ConquestType.EMAIL_RESPONSE) == [ids[1]]
    assert listed(philosopher="plato@example.com") == [ids[1]]
    assert listed(domain="other.org") == [ids[2]]
    assert listed(result=ConquestResult.VICTORY) == [ids[3]]
    assert listed(status=ConquestStatus.DRAFT) == ids[::-1]
    assert listed(status=ConquestStatus.ANALYZING) == []
    assert len(store.list_conquests(None).conquests) == 6
    with pytest.raises(InvalidArgument) as bad:
        store.list_conquests("p1", page_token="42")
    assert bad.value.param == "page_token"
    with pytest.raises(InvalidArgument) as negative:
        store.list_conquests("p1", size=-1)
    assert negative.value.param == "page_size"


def test_another_projects_conquest_is_not_found_like_an_unknown_one(store: ConquestStore) -> None:
    cid = _create(store, "p1")
    unknown = "conq_" + "0" * 24
    with pytest.raises(NotFound) as theirs:
        store.get("p2", cid)
    with pytest.raises(NotFound) as missing:
        store.get("p2", unknown)
    assert theirs.value.param == missing.value.param == "conquest_id"
    assert theirs.value.message == f"no conquest {cid!r}"
    assert missing.value.message == f"no conquest {unknown!r}"
    with pytest.raises(NotFound):
        store.annotate("p2", cid, Annotation(rating=5))
    with pytest.raises(NotFound):
        store.set_result("p2", cid, "VICTORY")
    with pytest.raises(NotFound) as malformed:
        store.get("p1", "conq_nope")
    assert "conq_nope" in malformed.value.message
    assert store.list_conquests("p2").conquests == []
    assert store.get("p1", cid).result is ConquestResult.PENDING


def test_unknown_type_names_the_valid_types(store: ConquestStore) -> None:
    with pytest.raises(InvalidArgument) as bad:
        store.create("p1", NewConquest(type="CONQUISTADOR"))
    assert bad.value.param == "type"
    assert "CONQUISTADOR" in bad.value.message
    for kind in ConquestType:
        assert kind.value in bad.value.message
    with pytest.raises(InvalidArgument) as status:
        store.create("p1", NewConquest(type="CUSTOM", status="COMPLETED"))
    assert status.value.param == "status"
    with pytest.raises(InvalidArgument) as result:
        store.set_result("p1", _create(store), "WIN")
    assert result.value.param == "result" and "VICTORY" in result.value.message
    with pytest.raises(InvalidArgument) as nul:
        store.create("p1", NewConquest(type="CUSTOM", title="a\x00b"))
    assert nul.value.param == "title"


def test_annotate_writes_then_updates_one_row(store: ConquestStore) -> None:
    cid = _create(store)
    first = store.annotate("p1", cid, Annotation(rating=4, feedback="good"))
    second = store.annotate("p1", cid, Annotation(rating=2, feedback="on second look"))
    assert first.id == second.id
    assert second.rating == 2 and second.feedback == "on second look"
    assert second.analysis_type == "CANDIDATE" and second.ls_task_id == 0
    assert second.philosopher == "socrates@example.com" and second.include_in_training
    store.annotate("p1", cid, Annotation(rating=5, ls_task_id=31, ls_annotation_id=77))
    assert [r.ls_task_id for r in store.ratings_of("p1", cid)] == [0, 31]
    with pytest.raises(InvalidArgument) as bad:
        store.annotate("p1", cid, Annotation(rating=6))
    assert bad.value.param == "rating"


def test_set_result_victory_marks_the_gold_sync_pending(store: ConquestStore) -> None:
    cid = _create(store)
    won = store.set_result("p1", cid, "VICTORY", notes="great", evaluated_by="ari@example.com")
    assert won.result is ConquestResult.VICTORY and won.gold_sync_pending
    assert won.evaluated_by == "ari@example.com" and won.evaluated_at
    assert [c.id for c in store.pending_gold_syncs("p1")] == [cid]
    assert store.pending_gold_syncs("p2") == []
    lost = store.set_result("p1", cid, "defeat")
    assert lost.result is ConquestResult.DEFEAT and not lost.gold_sync_pending
    health = store.health("p1")
    assert health.database_reachable and health.conquests == 1 and health.victories == 0


def test_health_says_when_the_database_does_not_answer() -> None:
    gone = create_db_engine("postgresql://postgres@127.0.0.1:9/aristotle?connect_timeout=2")
    try:
        health = ConquestStore(gone).health("p1")
    finally:
        gone.dispose()
    assert not health.database_reachable and health.error == "OperationalError"
