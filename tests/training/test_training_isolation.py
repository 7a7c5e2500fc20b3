"""Project isolation in the training domain (SQLite and PostgreSQL): another project's job reads
as an unknown one on every read and cancel, and a checkpoint cursor of another job (another
project's) tells nothing. The two-project suite over the real stack is
tests/e2e/test_isolation.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import NotFound
from loomstack_training.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_training.jobs import Jobs
from loomstack_training.validation import Hyperparameters

HP = Hyperparameters(1, 2, 1e-3, 64, 4, 8, 0.0, ("q_proj",))


def _job(jobs: Jobs, project: str) -> str:
    return jobs.create(
        project=project,
        model="base",
        base_model_path="/m",
        training_file="file-1",
        validation_file=None,
        suffix="s",
        seed=1,
        hyperparameters=HP,
        metadata={},
        runner="local",
    ).id


def _message(call: Callable[[str], Any], job_id: str) -> str:
    with pytest.raises(NotFound) as refused:
        call(job_id)
    return refused.value.message.replace(job_id, "<id>")


def test_another_projects_job_reads_as_unknown_and_its_cursor_as_none(db_url: str) -> None:
    migrate(db_url, MIGRATIONS, VERSION_TABLE)
    jobs = Jobs(create_db_engine(db_url))
    a, b = _job(jobs, "team-a"), _job(jobs, "team-b")
    unknown = "ftjob-" + "0" * 24
    for call in (
        lambda i: jobs.get("team-b", i),
        lambda i: jobs.cancel("team-b", i),
        lambda i: jobs.events("team-b", i),
        lambda i: jobs.checkpoints("team-b", i),
        lambda i: jobs.list_jobs("team-b", after=i),
    ):
        assert _message(call, a) == _message(call, unknown)
    assert jobs.get("team-a", a).status == "validating_files"  # B's cancel did nothing

    # A's checkpoints at steps 1-3, B's at 1-3: B paging with A's step-2 id as the cursor gets
    # what an unknown cursor gets (its first page), never "B's checkpoints below step 2".
    a_ids = [jobs.add_checkpoint(a, step, {}, f"blob-a{step}") for step in (1, 2, 3)]
    for step in (1, 2, 3):
        jobs.add_checkpoint(b, step, {}, f"blob-b{step}")
    first, _ = jobs.checkpoints("team-b", b, limit=10)
    foreign, _ = jobs.checkpoints("team-b", b, limit=10, after=a_ids[1])
    assert [c.step for c in foreign] == [c.step for c in first] == [3, 2, 1]
    own, _ = jobs.checkpoints("team-b", b, limit=10, after=first[1].id)
    assert [c.step for c in own] == [1]
