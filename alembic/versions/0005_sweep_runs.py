"""sweep membership: ebt_sweep_runs links runs to every sweep they are points of; imported copies become links

Before this revision a run that another sweep had already trained was stored again in the planning sweep as
an ``imported`` copy whose summary value ``source_run`` named the trained run. This revision makes every run
a member of its own sweep (``ebt_runs.sweep_id`` stays, as the run's owner) and turns each such copy into a
link of the copy's sweep to the source run, at the copy's axis and x: the fits that used the copy now name
the source run, and the copy row goes. Imported CSV rows (no ``source_run``) stay runs of their own.

Downgrade drops the links: a sweep then shows only the runs it owns (the removed copies are not re-created).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 22:00:00

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables whose rows hang off a run (deleted explicitly: no reliance on SQLite's foreign_keys pragma here).
RUN_CHILDREN = ('ebt_run_params', 'ebt_run_flops', 'ebt_run_summary', 'ebt_metrics', 'ebt_sweep_runs')


def upgrade() -> None:
    op.create_table('ebt_sweep_runs',
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('axis', sa.String(length=32), nullable=False),
    sa.Column('x', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['ebt_runs.id'], name=op.f('fk_ebt_sweep_runs_run_id_ebt_runs'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sweep_id'], ['ebt_sweeps.id'], name=op.f('fk_ebt_sweep_runs_sweep_id_ebt_sweeps'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sweep_id', 'run_id', name=op.f('pk_ebt_sweep_runs'))
    )
    with op.batch_alter_table('ebt_sweep_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ebt_sweep_runs_run_id'), ['run_id'], unique=False)

    conn = op.get_bind()
    conn.execute(sa.text("INSERT INTO ebt_sweep_runs (sweep_id, run_id, axis, x) "
                         "SELECT sweep_id, id, axis, x FROM ebt_runs"))
    copies = conn.execute(sa.text(
        "SELECT c.id, c.sweep_id, c.axis, c.x, s.value FROM ebt_runs c "
        "JOIN ebt_run_summary s ON s.run_id = c.id AND s.name = 'source_run' AND s.kind = 'finite' "
        "WHERE c.source = 'imported' ORDER BY c.id")).all()
    for copy_id, sweep_id, axis, x, value in copies:
        source = int(value)
        if source == copy_id or float(source) != value or conn.execute(
                sa.text("SELECT 1 FROM ebt_runs WHERE id = :s AND source = 'trained'"), {"s": source}).first() is None:
            continue  # not a copy of a stored trained run: keep it as the run of its own it is
        p = {"c": copy_id, "s": source, "w": sweep_id, "a": axis, "x": x}
        if conn.execute(sa.text("SELECT 1 FROM ebt_sweep_runs WHERE sweep_id = :w AND run_id = :s"), p).first() is None:
            conn.execute(sa.text("INSERT INTO ebt_sweep_runs (sweep_id, run_id, axis, x) VALUES (:w, :s, :a, :x)"), p)
        conn.execute(sa.text("UPDATE ebt_fit_runs SET run_id = :s WHERE run_id = :c AND fit_id NOT IN "
                             "(SELECT fit_id FROM ebt_fit_runs WHERE run_id = :s)"), p)
        conn.execute(sa.text("DELETE FROM ebt_fit_runs WHERE run_id = :c"), p)
        for table in RUN_CHILDREN:
            conn.execute(sa.text(f"DELETE FROM {table} WHERE run_id = :c"), p)
        conn.execute(sa.text("DELETE FROM ebt_runs WHERE id = :c"), p)


def downgrade() -> None:
    with op.batch_alter_table('ebt_sweep_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ebt_sweep_runs_run_id'))
    op.drop_table('ebt_sweep_runs')
