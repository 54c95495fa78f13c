"""The cheap reads that say whether a held answer still stands (issue 33, point 6; bench/api_latency.py
--scale): a job key's trials in the order stored, so a finished key's job status holds its trials'
tally (outcomes, fastest, workers) and reads only the newest trial's id to know it stands
(tuner/settled.py; grouping a key of 100,000 trials took 30 ms of every read), and the job keys'
states, counted by the retune report's token (tuner/reports/held.py) from the index instead of a
scan of every key. The index on job_key_id alone goes: ix_trials_job_key_order and
ix_trials_progress both lead with it.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_trials_job_key_order", "tuning_trials", ["job_key_id", "id"])
    op.drop_index("ix_tuning_trials_job_key_id", table_name="tuning_trials")
    op.create_index("ix_job_keys_state", "job_keys", ["state"])


def downgrade() -> None:
    op.drop_index("ix_job_keys_state", table_name="job_keys")
    op.create_index("ix_tuning_trials_job_key_id", "tuning_trials", ["job_key_id"])
    op.drop_index("ix_trials_job_key_order", table_name="tuning_trials")
