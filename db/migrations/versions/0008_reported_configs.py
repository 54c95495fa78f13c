"""The first winner a drop-in kernel timed locally for a key it missed (@autotune with
on_miss="autotune"), as reported with its misses: served to every later process of the class and
stack, so that ranks agree, until a measured best replaces it.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reported_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kernel", sa.String(length=100), nullable=False),
        sa.Column("kernel_version", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=16), nullable=False),
        sa.Column("key", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("device_class", sa.String(length=80), nullable=False),
        sa.Column("fingerprint", sa.String(length=80), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kernel", "kernel_version", "key_hash", "device_class", "fingerprint",
                            name="uq_reported_config"),
    )


def downgrade() -> None:
    op.drop_table("reported_configs")
