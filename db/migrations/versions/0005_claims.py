"""Hardening the service: claims of configurations in flight (no configuration of a study is
measured twice), what each worker holds (a slow batch is never re-sent), finalization attempts
and a key's error (a finalization that keeps failing ends the job), and no `jobs.budget_seconds`
(nothing ever set or honoured it).

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trial_claims",
        sa.Column("study_name", sa.String(length=200), nullable=False),
        sa.Column("config_hash", sa.String(length=16), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("job_key_id", sa.Integer(), nullable=True),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        sa.Column("trial_row_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_key_id"], ["job_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["trial_row_id"], ["tuning_trials.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("study_name", "config_hash"),
    )
    with op.batch_alter_table("workers") as b:
        b.add_column(sa.Column("holding_key_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("job_keys") as b:
        b.add_column(sa.Column("finalize_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))
        b.add_column(sa.Column("error", sa.Text(), nullable=True))
    with op.batch_alter_table("jobs") as b:
        b.drop_column("budget_seconds")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("budget_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("job_keys") as b:
        b.drop_column("error")
        b.drop_column("finalize_attempts")
    with op.batch_alter_table("workers") as b:
        b.drop_column("holding_key_id")
    op.drop_table("trial_claims")
