"""Leftover processes of a killed driver's local Ray instance are found by their temp dir and killed by PID."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebt_scaling.sched.runner import TEMP_PREFIX, _pid_alive, cleanup_leftover_ray


def test_cleanup_kills_processes_of_a_dead_driver_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not _pid_alive(dead.pid)
    root = Path(tempfile.gettempdir())
    dead_dir = root / f"{TEMP_PREFIX}{dead.pid}"
    dead_dir.mkdir(exist_ok=True)
    alive_dir = tmp_path / "alive"  # not an ebtray- folder: never touched
    code = "import time; time.sleep(120)"
    orphan = subprocess.Popen([sys.executable, "-c", code, str(dead_dir / "session_x" / "raylet")])
    bystander = subprocess.Popen([sys.executable, "-c", code, str(alive_dir)])
    try:
        time.sleep(0.3)
        killed = cleanup_leftover_ray()
        assert orphan.pid in killed and bystander.pid not in killed
        assert orphan.wait(10) != 0
        assert bystander.poll() is None
        assert not dead_dir.exists()
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_unreachable_ray_address_fails_fast_with_one_line(tmp_path):
    import socket

    from typer.testing import CliRunner

    from ebt_scaling.cli.main import app

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["sweep", "--axis", "depth", "--families", "transformer_pp", "--progress", "off",
                                 "--db", f"sqlite:///{tmp_path / 'a.db'}", "--address", f"127.0.0.1:{port}"])
    assert r.exit_code == 2, r.output
    assert f"--address 127.0.0.1:{port}: nothing answers there" in r.output
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "a.db").exists()  # nothing written
