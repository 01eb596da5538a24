"""fits: stored scaling-law fits and the exact runs each one used

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:52:35.419553

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ebt_fits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('axis', sa.String(length=32), nullable=False),
    sa.Column('family', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['sweep_id'], ['ebt_sweeps.id'], name=op.f('fk_ebt_fits_sweep_id_ebt_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ebt_fits')),
    sa.UniqueConstraint('sweep_id', 'axis', 'family', 'method', 'fingerprint', name=op.f('uq_ebt_fits_sweep_id_axis_family_method_fingerprint'))
    )
    op.create_table('ebt_fit_runs',
    sa.Column('fit_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['fit_id'], ['ebt_fits.id'], name=op.f('fk_ebt_fit_runs_fit_id_ebt_fits'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['ebt_runs.id'], name=op.f('fk_ebt_fit_runs_run_id_ebt_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('fit_id', 'run_id', name=op.f('pk_ebt_fit_runs'))
    )
    with op.batch_alter_table('ebt_fit_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ebt_fit_runs_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ebt_fit_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ebt_fit_runs_run_id'))

    op.drop_table('ebt_fit_runs')
    op.drop_table('ebt_fits')
