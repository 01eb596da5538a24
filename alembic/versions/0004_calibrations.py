"""calibrations: ebt_calibrations, measured training throughput written by `ebt-scale calibrate`, read by the plan

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:00:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ebt_calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_kind', sa.String(length=8), nullable=False),
    sa.Column('device_name', sa.String(length=255), nullable=False),
    sa.Column('family', sa.String(length=32), nullable=False),
    sa.Column('shape_key', sa.String(length=200), nullable=False),
    sa.Column('precision', sa.String(length=8), nullable=False),
    sa.Column('recipe', sa.String(length=32), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('flops_per_step', sa.Double(), nullable=False),
    sa.Column('seconds_per_step', sa.Double(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('warmup', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('torch_version', sa.String(length=64), nullable=True),
    sa.Column('measured_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("device_kind = 'cpu' OR device_kind = 'cuda'", name=op.f('ck_ebt_calibrations_device_kind')),
    sa.CheckConstraint('seconds_per_step > 0 AND flops_per_step > 0', name=op.f('ck_ebt_calibrations_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ebt_calibrations')),
    sa.UniqueConstraint('device_name', 'family', 'shape_key', 'precision', 'recipe', 'threads', name=op.f('uq_ebt_calibrations_key'))
    )


def downgrade() -> None:
    op.drop_table('ebt_calibrations')
