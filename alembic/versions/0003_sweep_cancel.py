"""sweep cancel requests: ebt_sweeps.cancel_requested_at, set by `ebt-scale cancel`, read by the live driver

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
    with op.batch_alter_table('ebt_sweeps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_requested_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ebt_sweeps', schema=None) as batch_op:
        batch_op.drop_column('cancel_requested_at')
