"""One driver per sweep: the lease (db/lease.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
from db_backends import db_url_fixture  # noqa: F401  (``db_url``)

from ebt_scaling.db.lease import LeaseHeld
from ebt_scaling.db.store import Store

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_second_lease_on_the_same_sweep_is_refused_with_its_holder(db_url):
    with Store(db_url) as a, Store(db_url) as b:
        with a.lease("depth-tiny"):
            with pytest.raises(LeaseHeld) as e:
                with b.lease("depth-tiny"):
                    pass
            msg = str(e.value)
            assert f"pid {os.getpid()} on " in msg and "since 20" in msg and "\n" not in msg
            with b.lease("width-tiny"):  # another sweep: its own lease
                pass
        with b.lease("depth-tiny"):  # released on exit
            pass


def _holder_process(db_url: str, sweep: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from ebt_scaling.db.store import Store
        s = Store({db_url!r})
        with s.lease({sweep!r}):
            print("held", flush=True)
            time.sleep(300)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_killed_driver_releases_its_lease_at_once(db_url):
    p = _holder_process(db_url, "s")
    try:
        with Store(db_url) as st:
            with pytest.raises(LeaseHeld, match=f"pid {p.pid} on "):
                with st.lease("s"):
                    pass
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
            import time

            for _ in range(100):  # PostgreSQL ends the dead session within moments
                try:
                    with st.lease("s"):
                        break
                except LeaseHeld:
                    time.sleep(0.1)
            else:
                pytest.fail("the lease of a killed driver was not released")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_second_sweep_driver_exits_in_one_line_before_touching_any_run(db_url, tmp_path):
    spec = tmp_path / "s.toml"
    text = (ROOT / "experiments" / "tiny" / "depth.toml").read_text().replace('name = "depth-tiny"', 'name = "lease"')
    spec.write_text(text)
    p = _holder_process(db_url, "lease")
    try:
        r = subprocess.run([sys.executable, "-m", "ebt_scaling", "sweep", "--spec", str(spec), "--db", db_url,
                            "--progress", "off"], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 1, r.stderr
        assert f"sweep 'lease' is being run by another driver (pid {p.pid} on " in r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        with Store(db_url) as st:
            assert st.list_sweeps() == [] and st.list_runs() == []  # nothing was planned or reset
    finally:
        p.kill()
        p.wait()
