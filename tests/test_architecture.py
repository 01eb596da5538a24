"""Import rules of ../shared/ARCHITECTURE.md, checked in fresh interpreters."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "ebt_scaling"


@pytest.mark.parametrize("module", ["ebt_scaling.db", "ebt_scaling.fit", "ebt_scaling.report",
                                    "ebt_scaling.config", "ebt_scaling.records", "ebt_scaling.sweeps"])
def test_light_modules_never_import_torch_or_ray(module):
    code = (f"import sys, importlib, pkgutil; m = importlib.import_module({module!r});\n"
            "for i in pkgutil.walk_packages(getattr(m, '__path__', []), m.__name__ + '.'):\n"
            "    importlib.import_module(i.name)\n"
            "bad = [x for x in ('torch', 'ray') if x in sys.modules]; print(bad); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=PKG.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_never_imports_torch_or_ray():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom ebt_scaling.cli.main import app\n"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output\n"
            "bad = [x for x in ('torch', 'ray') if x in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


FORBIDDEN = {
    "models": ("ebt_scaling.db", "ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.train", "ray"),
    "train": ("ebt_scaling.db", "ebt_scaling.sched", "ebt_scaling.cli", "ray", "sqlalchemy"),
    "data": ("ebt_scaling.db", "ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.train", "ray"),
    "fit": ("ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.train", "torch", "ray"),
    "report": ("ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.train", "torch", "ray"),
    "db": ("ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.train", "ebt_scaling.models", "torch", "ray"),
    "sweeps": ("ebt_scaling.sched", "ebt_scaling.cli", "ebt_scaling.db", "torch", "ray"),
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_import_direction(room):
    bad = []
    for path in (PKG / room).rglob("*.py"):
        for imp in _imports(path):
            if any(imp == f or imp.startswith(f + ".") for f in FORBIDDEN[room]):
                bad.append(f"{path.relative_to(PKG.parent)} imports {imp}")
    assert not bad, bad


@pytest.mark.parametrize("name", ["config.py", "records.py", "errors.py", "security.py", "names.py"])
def test_boundary_modules_are_stdlib_only(name):
    """Stdlib only, but for config.py's one validation library (pydantic v2: each field declared once)."""
    allowed_prefixes = ("ebt_scaling.",)
    stdlib = sys.stdlib_module_names
    validation = ("pydantic", "pydantic_core", "typing_extensions") if name == "config.py" else ()
    for imp in _imports(PKG / name):
        top = imp.split(".")[0]
        assert top in stdlib or top == "__future__" or top in validation or imp.startswith(allowed_prefixes), imp
