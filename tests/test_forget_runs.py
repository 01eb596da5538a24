"""Issue 30: failed runs taken out of a sweep for good (`ebt-scale runs --sweep S --forget failed`): the sweep's
link goes, the run stays (another sweep may link it), the forgetting is recorded (who, when, why) and listed,
and a rerun of the sweep leaves the runs out unless --retry-failed."""

from __future__ import annotations

from db_backends import db_url_fixture  # noqa: F401  (the parametrised ``db_url`` fixture)
from typer.testing import CliRunner

from ebt_scaling.cli.main import app
from ebt_scaling.db import Store
from ebt_scaling.records import PlannedRun
from ebt_scaling.sched.service import _leave_out_forgotten


class _Run:
    def __init__(self, h: str) -> None:
        self.config_hash = h


def test_forget_unlinks_records_and_a_rerun_leaves_them_out(db_url):
    with Store(db_url) as s:
        s.create_sweep("a", "width")
        s.create_sweep("b", "width")
        a = s.plan_runs("a", [PlannedRun("ebt", "width", 32, 0, "h1"), PlannedRun("ebt", "width", 64, 0, "h2"),
                              PlannedRun("ebt", "width", 96, 0, "h3")])
        s.plan_runs("b", [PlannedRun("ebt", "width", 64, 0, "h2")])
        s.finish_run(a[0].id, "completed", result={"final_val_loss": 2.5})
        s.finish_run(a[1].id, "failed", reason="DataError: no window")
        s.finish_run(a[2].id, "diverged", reason="loss is nan")
    r = CliRunner().invoke(app, ["runs", "--sweep", "a", "--forget", "failed", "--why", "bad store", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert f"forgot run {a[1].id} (failed: DataError: no window)" in r.output and "1 run(s) forgotten" in r.output
    with Store(db_url) as s:
        assert [x.id for x in s.list_runs(sweep="a")] == [a[0].id, a[2].id]  # the diverged one stays: not asked
        assert [x.id for x in s.list_runs(sweep="b")] == [a[1].id]  # the run itself stays, for sweep b
        rec = s.forgotten_runs("a")["h2"]
        assert (rec["run_id"], rec["status"], rec["reason"], rec["why"]) == (a[1].id, "failed", "DataError: no window",
                                                                            "bad store")
        assert rec["by"] and rec["at"]
        said: list[str] = []
        runs = [_Run("h1"), _Run("h2"), _Run("h3")]
        kept = _leave_out_forgotten(s, "a", runs, False, said.append)  # a rerun: left out, said once
        assert [x.config_hash for x in kept] == ["h1", "h3"]
        assert len(said) == 1 and "1 forgotten run(s) left out" in said[0]
        kept = _leave_out_forgotten(s, "a", runs, True, said.append)  # --retry-failed: planned again, recorded
        assert len(kept) == 3 and s.forgotten_runs("a") == {}
    r = CliRunner().invoke(app, ["runs", "--sweep", "a", "--forgotten", "--db", db_url])
    assert r.exit_code == 0 and "0 run(s) forgotten" in r.output


def test_forget_refuses_what_it_cannot_do(db_url):
    with Store(db_url) as s:
        s.create_sweep("depth-tiny", "depth")
    for args, msg, code in ((["--forget", "failed"], "need --sweep NAME", 2),
                            (["--sweep", "depth-tiny", "--forget", "completed"], "use failed, diverged", 2),
                            (["--sweep", "depth-tin", "--forget", "failed"], "did you mean 'depth-tiny'", 1),
                            (["--sweep", "depth-tin"], "did you mean 'depth-tiny'", 1)):
        r = CliRunner().invoke(app, ["runs", *args, "--db", db_url])
        assert r.exit_code == code and msg in r.output, (args, r.output)
    r = CliRunner().invoke(app, ["runs", "--sweep", "depth-tiny", "--forget", "failed", "--db", db_url])
    assert r.exit_code == 0 and "0 run(s) forgotten: none failed" in r.output


def test_fit_and_report_list_the_forgotten_runs_with_their_reasons(db_url, tmp_path):
    import json
    import shutil
    import subprocess

    with Store(db_url) as s:
        s.create_sweep("a", "width")
        a = s.plan_runs("a", [PlannedRun("ebt", "width", 32, 0, "h1"), PlannedRun("ebt", "width", 64, 0, "h2")])
        s.finish_run(a[0].id, "completed", result={"final_val_loss": 2.5})
        s.finish_run(a[1].id, "failed", reason="DataError: the validation split holds 20 tokens")
    r = CliRunner().invoke(app, ["runs", "--sweep", "a", "--forget", "failed", "--why", "bad store", "--db", db_url])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["fit", "--sweep", "a", "--resamples", "100", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert "forgotten: 1 run(s) of sweep a, in no fit" in r.output
    assert f"run {a[1].id} failed (bad store): DataError: the validation split holds 20 tokens" in r.output
    r = CliRunner().invoke(app, ["fit", "--sweep", "a", "--resamples", "100", "--format", "json", "--db", db_url])
    forgotten = json.loads(r.stdout)["forgotten"]
    assert [(f["sweep"], f["run_id"], f["status"], f["why"]) for f in forgotten] == [("a", a[1].id, "failed",
                                                                                      "bad store")]
    out = tmp_path / "r.pdf"
    r = CliRunner().invoke(app, ["report", "--sweep", "a", "--resamples", "100", "--out", str(out), "--db", db_url])
    assert r.exit_code == 0, r.output
    if shutil.which("pdftotext"):
        text = " ".join(subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True,
                                       check=True).stdout.split())
        assert "Forgotten: 1 failed run(s) of sweep a" in text  # on the summary
        assert f"run {a[1].id} of sweep a (failed)" in text and "the validation split holds 20 tokens" in text
