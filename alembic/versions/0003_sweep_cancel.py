"""cancel requests: ebt_cancel_requests, written by `ebt-scale cancel`, polled by the sweep's live driver

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:00:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ebt_cancel_requests',
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('requested_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['sweep_id'], ['ebt_sweeps.id'], name=op.f('fk_ebt_cancel_requests_sweep_id_ebt_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sweep_id', name=op.f('pk_ebt_cancel_requests'))
    )


def downgrade() -> None:
    op.drop_table('ebt_cancel_requests')
