"""What model processes were served from a fallback level, counted by the runtime, for
`tuner misses` and `tuner retune --misses`.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runtime_misses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kernel", sa.String(length=100), nullable=False),
        sa.Column("kernel_version", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=16), nullable=False),
        sa.Column("key", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("device_class", sa.String(length=80), nullable=False),
        sa.Column("fingerprint", sa.String(length=80), nullable=False),
        sa.Column("level", sa.String(length=24), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kernel", "kernel_version", "key_hash", "device_class", "fingerprint", "level",
                            name="uq_runtime_miss"),
    )
    op.create_index("ix_runtime_miss_class", "runtime_misses", ["device_class", "count"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_runtime_miss_class", table_name="runtime_misses")
    op.drop_table("runtime_misses")
