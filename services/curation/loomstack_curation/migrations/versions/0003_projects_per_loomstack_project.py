"""Label Studio projects per Loomstack project: the mapping is keyed by (project, schema version)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:00:00.000000

Until now one Label Studio project held every Loomstack project's tasks of a schema version.
Each existing mapping is kept, without creating any Label Studio project, and given to ONE
Loomstack project:

- the project that owns most of the Label Studio project's tasks (on a tie, the one whose task
  was imported first);
- for a Label Studio project without tasks, the project of the last import that named it, else
  `default`.

The tasks of every other Loomstack project in that Label Studio project stay where they are
and recorded as they are (nothing is lost): the service moves them, with their predictions and
annotations, into their own project's Label Studio project (created on first use, like an
import does) and then deletes the old copies (relocation.py). The move is resumable and never
makes a second copy of a task: a copy being sent is marked (`curation_tasks.moving_to`) and
found again after a crash, and the old copies to delete are listed in `curation_relocations`
until Label Studio has deleted them. Such a task's Label Studio id (the API's task id) changes
with the move. The owner's Label Studio project keeps its tasks and ids; its title is renamed
to name the project when the service next starts.

Downgrade keeps, per schema version, the mapping created first; the Label Studio projects of
the others stay in Label Studio, unmapped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_DEFAULT_PROJECT = "default"


def _owner(conn: sa.Connection, ls_project_id: int) -> str:
    counts = conn.execute(
        sa.text(
            "SELECT project, COUNT(*) AS n, MIN(id) AS first FROM curation_tasks "
            "WHERE ls_project_id = :p GROUP BY project ORDER BY n DESC, first ASC"
        ),
        {"p": ls_project_id},
    ).first()
    if counts is not None:
        return str(counts.project)
    last_import = conn.execute(
        sa.text(
            "SELECT project FROM curation_imports WHERE ls_project_id = :p "
            "ORDER BY updated_at DESC, batch_id LIMIT 1"
        ),
        {"p": ls_project_id},
    ).first()
    return str(last_import.project) if last_import is not None else OLD_DEFAULT_PROJECT


def upgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "curation_projects_v3",
        sa.Column("project", sa.String(length=128), nullable=False),
        sa.Column("schema_key", sa.String(length=160), nullable=False),
        sa.Column("schema_id", sa.String(length=64), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("ls_project_id", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("project", "schema_key", name="pk_curation_projects"),
        sa.UniqueConstraint("ls_project_id", name="uq_curation_projects_ls_project_id"),
    )
    rows = conn.execute(
        sa.text(
            "SELECT schema_key, schema_id, schema_version, ls_project_id, title, created_at "
            "FROM curation_projects ORDER BY schema_key"
        )
    ).all()
    new = sa.table(
        "curation_projects_v3",
        sa.column("project"),
        sa.column("schema_key"),
        sa.column("schema_id"),
        sa.column("schema_version"),
        sa.column("ls_project_id"),
        sa.column("title"),
        sa.column("created_at"),
    )
    for row in rows:
        conn.execute(
            new.insert().values(
                project=_owner(conn, row.ls_project_id),
                schema_key=row.schema_key,
                schema_id=row.schema_id,
                schema_version=row.schema_version,
                ls_project_id=row.ls_project_id,
                title=row.title,
                created_at=row.created_at,
            )
        )
    op.drop_table("curation_projects")
    op.rename_table("curation_projects_v3", "curation_projects")

    op.create_table(
        "curation_relocations",
        sa.Column("ls_task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ls_project_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("ls_task_id"),
    )
    with op.batch_alter_table("curation_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("moving_to", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_curation_tasks_ls_project", ["ls_project_id"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("curation_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_curation_tasks_ls_project")
        batch_op.drop_column("moving_to")
    op.drop_table("curation_relocations")
    op.create_table(
        "curation_projects_v2",
        sa.Column("schema_key", sa.String(length=160), nullable=False),
        sa.Column("schema_id", sa.String(length=64), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("ls_project_id", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("schema_key", name="curation_projects_v2_pkey"),
        sa.UniqueConstraint("ls_project_id", name="curation_projects_v2_ls_project_id_key"),
    )
    first: dict[str, sa.Row] = {}
    for row in conn.execute(
        sa.text(
            "SELECT schema_key, schema_id, schema_version, ls_project_id, title, created_at "
            "FROM curation_projects ORDER BY created_at, project"
        )
    ):
        first.setdefault(row.schema_key, row)
    old = sa.table(
        "curation_projects_v2",
        sa.column("schema_key"),
        sa.column("schema_id"),
        sa.column("schema_version"),
        sa.column("ls_project_id"),
        sa.column("title"),
        sa.column("created_at"),
    )
    for row in first.values():
        conn.execute(old.insert().values(**row._asdict()))
    op.drop_table("curation_projects")
    op.rename_table("curation_projects_v2", "curation_projects")
