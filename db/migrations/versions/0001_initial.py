"""The first schema: device classes, stack fingerprints, workers, jobs, their keys, trials and
best configurations (never overwritten: superseded rows keep the history).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('device_classes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=80), nullable=False),
    sa.Column('vendor', sa.String(length=16), nullable=False),
    sa.Column('arch', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('compute_units', sa.Integer(), nullable=False),
    sa.Column('memory_gb', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slug')
    )
    op.create_table('stack_fingerprints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=16), nullable=False),
    sa.Column('driver', sa.String(length=64), nullable=False),
    sa.Column('runtime', sa.String(length=64), nullable=False),
    sa.Column('triton', sa.String(length=64), nullable=False),
    sa.Column('torch', sa.String(length=64), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash')
    )
    op.create_table('best_configs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kernel', sa.String(length=100), nullable=False),
    sa.Column('kernel_version', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=16), nullable=False),
    sa.Column('key', sa.JSON(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('device_class_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('config_hash', sa.String(length=16), nullable=False),
    sa.Column('median_ms', sa.Float(), nullable=False),
    sa.Column('default_ms', sa.Float(), nullable=True),
    sa.Column('speedup', sa.Float(), nullable=True),
    sa.Column('cv', sa.Float(), nullable=True),
    sa.Column('trials', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_class_id'], ['device_classes.id'], ),
    sa.ForeignKeyConstraint(['fingerprint_id'], ['stack_fingerprints.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_best_kernel_class', 'best_configs', ['kernel', 'device_class_id'], unique=False)
    op.create_index('ix_best_lookup', 'best_configs', ['kernel', 'key_hash', 'device_class_id'], unique=False)
    op.create_index('uq_best_current', 'best_configs', ['kernel', 'kernel_version', 'key_hash', 'device_class_id', 'fingerprint_id'], unique=True, sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))
    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('kernel', sa.String(length=100), nullable=False),
    sa.Column('kernel_version', sa.String(length=32), nullable=False),
    sa.Column('device_class_id', sa.Integer(), nullable=True),
    sa.Column('device_selector', sa.String(length=80), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('sampler', sa.String(length=16), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('budget_trials', sa.Integer(), nullable=False),
    sa.Column('budget_seconds', sa.Float(), nullable=True),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_class_id'], ['device_classes.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_jobs_state'), 'jobs', ['state'], unique=False)
    op.create_table('workers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('hostname', sa.String(length=200), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('device', sa.String(length=32), nullable=True),
    sa.Column('device_class_id', sa.Integer(), nullable=True),
    sa.Column('fingerprint_id', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_class_id'], ['device_classes.id'], ),
    sa.ForeignKeyConstraint(['fingerprint_id'], ['stack_fingerprints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('job_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=16), nullable=False),
    sa.Column('key', sa.JSON(), nullable=False),
    sa.Column('study_name', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('trials_done', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'key_hash')
    )
    op.create_index(op.f('ix_job_keys_job_id'), 'job_keys', ['job_id'], unique=False)
    op.create_table('tuning_trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('job_key_id', sa.Integer(), nullable=True),
    sa.Column('kernel', sa.String(length=100), nullable=False),
    sa.Column('key_hash', sa.String(length=16), nullable=False),
    sa.Column('device_class_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint_id', sa.Integer(), nullable=False),
    sa.Column('worker_id', sa.Integer(), nullable=True),
    sa.Column('study_name', sa.String(length=200), nullable=True),
    sa.Column('optuna_number', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('config_hash', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('median_ms', sa.Float(), nullable=True),
    sa.Column('p20_ms', sa.Float(), nullable=True),
    sa.Column('p80_ms', sa.Float(), nullable=True),
    sa.Column('cv', sa.Float(), nullable=True),
    sa.Column('reps', sa.Integer(), nullable=True),
    sa.Column('compile_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_class_id'], ['device_classes.id'], ),
    sa.ForeignKeyConstraint(['fingerprint_id'], ['stack_fingerprints.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_key_id'], ['job_keys.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_tuning_trials_job_id'), 'tuning_trials', ['job_id'], unique=False)
    op.create_index(op.f('ix_tuning_trials_job_key_id'), 'tuning_trials', ['job_key_id'], unique=False)
    op.create_index(op.f('ix_tuning_trials_key_hash'), 'tuning_trials', ['key_hash'], unique=False)
    op.create_index(op.f('ix_tuning_trials_study_name'), 'tuning_trials', ['study_name'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_tuning_trials_study_name'), table_name='tuning_trials')
    op.drop_index(op.f('ix_tuning_trials_key_hash'), table_name='tuning_trials')
    op.drop_index(op.f('ix_tuning_trials_job_key_id'), table_name='tuning_trials')
    op.drop_index(op.f('ix_tuning_trials_job_id'), table_name='tuning_trials')
    op.drop_table('tuning_trials')
    op.drop_index(op.f('ix_job_keys_job_id'), table_name='job_keys')
    op.drop_table('job_keys')
    op.drop_table('workers')
    op.drop_index(op.f('ix_jobs_state'), table_name='jobs')
    op.drop_table('jobs')
    op.drop_index('uq_best_current', table_name='best_configs', sqlite_where=sa.text('superseded_at IS NULL'), postgresql_where=sa.text('superseded_at IS NULL'))
    op.drop_index('ix_best_lookup', table_name='best_configs')
    op.drop_index('ix_best_kernel_class', table_name='best_configs')
    op.drop_table('best_configs')
    op.drop_table('stack_fingerprints')
    op.drop_table('device_classes')
