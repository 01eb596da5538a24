"""Leftover processes of a killed driver's local Ray instance are found by their temp dir and killed by PID."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebt_scaling.sched.runner import TEMP_PREFIX, _pid_alive, cleanup_leftover_ray, driver_temp_dirs, make_temp_dir


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


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not _pid_alive(p.pid)
    return p.pid


def test_cleanup_matches_the_exact_folder_not_a_prefix(tmp_path):
    """A dead driver 1487 must not take down the Ray processes of live drivers 14870-14879."""
    dead = _dead_pid()
    dead_dir = tmp_path / f"{TEMP_PREFIX}{dead}-abc123"
    dead_dir.mkdir(mode=0o700)
    code = "import time; time.sleep(120)"
    orphan = subprocess.Popen([sys.executable, "-c", code, f"--temp-dir={dead_dir}", str(dead_dir / "s" / "raylet")])
    neighbours = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{TEMP_PREFIX}{dead}0" / "raylet")]),
                  subprocess.Popen([sys.executable, "-c", code, f"--x={dead_dir}0/sockets"]),
                  subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{TEMP_PREFIX}{dead}-abc1234")])]
    try:
        time.sleep(0.3)
        killed = cleanup_leftover_ray(str(tmp_path))
        assert killed == [orphan.pid]
        assert orphan.wait(10) != 0
        assert all(p.poll() is None for p in neighbours)
        assert not dead_dir.exists()
    finally:
        for p in (orphan, *neighbours):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_temp_dir_is_private_unpredictable_and_found_by_pid(tmp_path):
    import os
    import stat

    a, b = make_temp_dir(str(tmp_path)), make_temp_dir(str(tmp_path))
    assert a != b  # a random part: a folder someone created in advance is never reused
    for d in (a, b):
        st = Path(d).stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        name = Path(d).name  # short, as Ray socket paths must be: ebtray-<pid>-<8 random characters>
        assert name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and len(name) <= len(TEMP_PREFIX) + 7 + 1 + 8
    assert driver_temp_dirs(os.getpid(), str(tmp_path)) == sorted([Path(a), Path(b)])
    assert driver_temp_dirs(os.getpid() * 10, str(tmp_path)) == []


def test_cleanup_skips_a_planted_symlink(tmp_path):
    dead = _dead_pid()
    target = tmp_path / "victim"
    target.mkdir()
    (tmp_path / f"{TEMP_PREFIX}{dead}-zz").symlink_to(target)
    assert cleanup_leftover_ray(str(tmp_path)) == []
    assert target.exists()
