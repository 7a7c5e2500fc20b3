"""The plain domain modules: the job state machine on SQLite and PostgreSQL, and the eval
gate's scores and decision."""

from __future__ import annotations

import pytest

from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import FailedPrecondition
from loomstack_training.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_training.eval_gate import split_example
from loomstack_training.jobs import Jobs
from loomstack_training.scoring import Scores, exact_match, promoted, score, token_overlap
from loomstack_training.validation import Hyperparameters

HP = Hyperparameters(1, 2, 1e-3, 64, 4, 8, 0.0, ("q_proj",))


def _jobs(url: str) -> Jobs:
    migrate(url, MIGRATIONS, VERSION_TABLE)
    return Jobs(create_db_engine(url))


def _create(jobs: Jobs, runner: str = "local") -> str:
    job = jobs.create(
        project="p",
        model="base",
        base_model_path="/m",
        training_file="file-1",
        validation_file=None,
        suffix="s",
        seed=1,
        hyperparameters=HP,
        metadata={},
        runner=runner,
    )
    return job.id


def test_state_machine_never_resurrects_a_final_job(db_url: str) -> None:
    jobs = _jobs(db_url)
    job_id = _create(jobs)
    assert jobs.get("p", job_id).status == "validating_files"
    assert jobs.claim_next("local") is None  # not queued yet
    jobs.mark_queued(job_id, "ok")
    claimed = jobs.claim_next("local")
    assert claimed is not None and claimed.id == job_id and claimed.status == "running"
    assert jobs.claim_next("local") is None
    jobs.cancel("p", job_id)
    # A runner that finishes after the cancel cannot move the job any more.
    assert not jobs.fail(job_id, "trainer_failed", "late")
    assert not jobs.succeed(
        job_id,
        fine_tuned_model="x",
        trained_tokens=1,
        trained_steps=1,
        result_files=[],
        adapter_blob_id="b",
        eval_result=None,
        message="late",
    )
    assert jobs.get("p", job_id).status == "cancelled"
    with pytest.raises(FailedPrecondition):
        jobs.cancel("p", job_id)
    # Another project does not see the job.
    assert jobs.list_jobs("other")[0] == []


def test_unfinished_jobs_are_found_for_reconcile(db_url: str) -> None:
    jobs = _jobs(db_url)
    running, queued = _create(jobs), _create(jobs)
    jobs.mark_queued(running, "ok")
    jobs.claim_next("local")
    jobs.mark_queued(queued, "ok")
    assert {j.id for j in jobs.unfinished("local")} == {running}
    assert jobs.unfinished("kubernetes") == []


def test_scores_and_the_gate() -> None:
    assert exact_match(" Eleven  Ducks ", "eleven ducks") == 1.0
    assert token_overlap("eleven ducks", "Loomstack says: eleven ducks.") == pytest.approx(2 / 3)
    assert token_overlap("", "x") == 0.0
    s = score(["a b", "c"], ["a b", "d"])
    assert s == Scores(exact_match=0.5, token_overlap=0.5)
    base, tuned = Scores(0.0, 0.40), Scores(0.5, 0.55)
    assert promoted(base, tuned, margin=0.1)
    assert not promoted(base, tuned, margin=0.2)
    assert not promoted(base, base, margin=0.0)
    prompt, reference = split_example(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    )
    assert [m["role"] for m in prompt] == ["system", "user"] and reference == "a"
