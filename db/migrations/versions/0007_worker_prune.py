"""Indexes of trials and claims by worker, for pruning the rows of workers gone for
TUNER_WORKERS_KEEP_DAYS (workers/janitor.py prune_workers): their trials' worker_id is set to NULL
before the workers' rows are deleted, and the DELETE's own foreign-key actions look each deleted
worker up in tuning_trials (its check) and trial_claims (ON DELETE SET NULL); without the indexes
each is a scan of a table of a million rows (one claim per trial), per worker deleted.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_trials_worker", "tuning_trials", ["worker_id"])
    op.create_index("ix_claims_worker", "trial_claims", ["worker_id"])


def downgrade() -> None:
    op.drop_index("ix_claims_worker", table_name="trial_claims")
    op.drop_index("ix_trials_worker", table_name="tuning_trials")
