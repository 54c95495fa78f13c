"""Indexes for the read paths at fleet scale (2,000 workers, 10,000 jobs, a million trials, one
key with 100,000, 100,000 runtime-miss rows; bench/api_latency.py --scale): a key's page counts and
pages its trials in the order stored, a job's progress groups a key's trials by outcome and finds
its fastest, /metrics counts the last minute's trials, and the misses are listed most frequent
first, each from an index instead of a scan of the table.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_trials_key_order", "tuning_trials", ["kernel", "key_hash", "id"])
    # PostgreSQL reads a job key's progress from the index alone (SQLite ignores the INCLUDE)
    op.create_index("ix_trials_progress", "tuning_trials", ["job_key_id", "status", "median_ms"],
                    postgresql_include=["device_class_id", "worker_id", "config_hash"])
    op.create_index("ix_trials_created", "tuning_trials", ["created_at"])
    op.create_index("ix_job_keys_key_hash", "job_keys", ["key_hash"])  # a key's page finds its key's JSON
    op.create_index("ix_runtime_miss_count", "runtime_misses", ["count", "last_seen"])


def downgrade() -> None:
    op.drop_index("ix_runtime_miss_count", table_name="runtime_misses")
    op.drop_index("ix_job_keys_key_hash", table_name="job_keys")
    op.drop_index("ix_trials_created", table_name="tuning_trials")
    op.drop_index("ix_trials_progress", table_name="tuning_trials")
    op.drop_index("ix_trials_key_order", table_name="tuning_trials")
