"""Host-memory reuse (ebt_scaling/host_memory.py): an EBT step reuses freed memory instead of re-faulting it.

Each case runs in a fresh interpreter: glibc's malloc settings are per process and cannot be undone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ebt_scaling.cli.main import app

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "EBT_SCALE_HOST_MALLOC")}

# Eight S1 loss+backward steps of the nano EBT at V 2048, T 64, batch 8 (4 MiB (B, T, V) tensors); the minor page
# faults of the last six are counted. With glibc's defaults the freed top of the heap goes back to the kernel
# and comes back zeroed at a later step (measured at this commit: 13.2k-21.3k faults over the six steps); with
# the memory kept, the steps reuse the pages of the first ones (measured: 1.0k-2.2k, the median step 0).
PROBE = """
import json, sys
import torch
from ebt_scaling.config import model_config
from ebt_scaling.host_memory import keep_freed_memory, minor_faults
from ebt_scaling.models import build_model
state = keep_freed_memory() if sys.argv[1] == "call" else "not called"
torch.manual_seed(0)
model = build_model(model_config("ebt", "nano", vocab_size=2048, sequence_len=64, recipe="ebt_s1")).train()
idx = torch.randint(0, 2048, (8, 65))
faults = []
for _ in range(8):
    f0 = minor_faults()
    loss, _ = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    faults.append(minor_faults() - f0)
print(json.dumps({"state": state, "faults": sum(faults[2:])}))
"""


def _thp_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


def _probe(mode: str, **env: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                       env={**CLEAN_ENV, "OMP_NUM_THREADS": "1", **env}, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_back():
    kept = _probe("call")
    system = _probe("call", EBT_SCALE_HOST_MALLOC="system")
    default = _probe("no call")
    assert kept["state"] == "kept" and system["state"] == "system"
    # The probe itself is sound: without the setting the steps fault their pages back in (a (B, T, V) tensor
    # is 1,024 pages; the six steps allocate dozens of them). A kernel that backs the heap with transparent huge
    # pages for every process ("always") faults 512x less and leaves nothing to measure here.
    if default["faults"] < 6000 and _thp_always():
        pytest.skip(f"transparent huge pages 'always': {default['faults']} faults without the setting")
    assert default["faults"] > 6000, default
    assert system["faults"] > 6000, system
    assert kept["faults"] < default["faults"] / 3, (kept, default)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_users_own_malloc_settings_are_left_alone():
    user = _probe("call", MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="131072")
    assert user["state"] == "user"
    tunables = _probe("call", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert tunables["state"] == "user"


def test_bad_value_is_one_line_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("EBT_SCALE_HOST_MALLOC", "jemalloc")
    r = CliRunner().invoke(app, ["train", "--preset", "nano", "--data", "synthetic", "--vocab-size", "32",
                                 "--steps", "2", "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "EBT_SCALE_HOST_MALLOC: unknown value 'jemalloc'" in lines[0], r.stderr
    assert "keep" in lines[0] and "system" in lines[0]
    assert not (tmp_path / "ck").exists()


def test_think_and_sweep_reject_a_bad_value_before_touching_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("EBT_SCALE_HOST_MALLOC", "nope")
    db = tmp_path / "r.db"
    for args in (["think", "--sweep", "x", "--db", f"sqlite:///{db}"],
                 ["sweep", "--axis", "depth", "--db", f"sqlite:///{db}"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "EBT_SCALE_HOST_MALLOC: unknown value 'nope'" in r.stderr, (args, r.stderr)
        assert not db.exists(), args


def test_work_on_a_device_leaves_the_host_allocator_alone_but_still_checks_the_switch(monkeypatch):
    from ebt_scaling.errors import ConfigError
    from ebt_scaling.host_memory import keep_freed_memory

    assert keep_freed_memory("cuda") == "not cpu"  # returns before touching malloc (safe in this process)
    monkeypatch.setenv("EBT_SCALE_HOST_MALLOC", "jemalloc")
    with pytest.raises(ConfigError, match="EBT_SCALE_HOST_MALLOC: unknown value 'jemalloc'"):
        keep_freed_memory("cuda")
