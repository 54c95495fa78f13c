"""Device names as torch reports them, per device class (vLLM and SGLang name their config files
by them), and configurations imported from others' tuning (vLLM's config files) as seeds.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_classes") as batch:
        batch.add_column(sa.Column("device_names", sa.JSON(), nullable=True))
    op.create_table(
        "imported_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kernel", sa.String(length=100), nullable=False),
        sa.Column("device_selector", sa.String(length=80), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("dims", sa.JSON(), nullable=False),
        sa.Column("dims_hash", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kernel", "device_selector", "dtype", "dims_hash"),
    )
    op.create_index("ix_imported_lookup", "imported_configs", ["kernel", "dtype"])


def downgrade() -> None:
    op.drop_index("ix_imported_lookup", table_name="imported_configs")
    op.drop_table("imported_configs")
    with op.batch_alter_table("device_classes") as batch:
        batch.drop_column("device_names")
