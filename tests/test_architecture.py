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


@pytest.mark.parametrize("name", ["config.py", "records.py", "errors.py", "security.py", "names.py",
                                  "provenance.py", "fit/results.py"])
def test_boundary_modules_are_stdlib_only(name):
    """Stdlib only, but for config.py's one validation library (pydantic v2: each field declared once)."""
    allowed_prefixes = ("ebt_scaling.",)
    stdlib = sys.stdlib_module_names
    validation = ("pydantic", "pydantic_core", "typing_extensions") if name == "config.py" else ()
    for imp in _imports(PKG / name):
        top = imp.split(".")[0]
        assert top in stdlib or top == "__future__" or top in validation or imp == "ebt_scaling" \
            or imp.startswith(allowed_prefixes), imp


# ------------------------------------------------------------------------------------------ import circles


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``ebt_scaling`` modules it imports, counting every import statement wherever it sits (inside
    functions too: a deferred import hides a circle, it does not remove it). ``from pkg import name`` points at
    the submodule ``pkg.name`` when there is one, else at ``pkg``; relative imports are resolved."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        deps = set()
        for t in targets:
            while t and t not in modules:  # ``import a.b.c`` of a name inside a.b -> a.b
                t = t.rpartition(".")[0]
            if t and t != mod:
                deps.add(t)
        graph[mod] = deps
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    def path_back(comp: list[str]) -> list[str]:  # a shortest way from comp[0] round to itself, inside comp
        start, members = comp[0], set(comp)
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        chain = [v]
                        while chain[-1] != start:
                            chain.append(prev[chain[-1]])
                        return [*reversed(chain), start]
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        return comp

    return [path_back(c) for c in comps]


def test_the_circle_finder_sees_deferred_and_relative_imports():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "p.e": set()}
    assert import_circles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
    real = import_graph()
    assert "ebt_scaling.sched.trial_common" in real["ebt_scaling.sched.ddp"]
    assert "ebt_scaling.fit.results" in real["ebt_scaling.fit.axis"]  # a multi-line ``from ... import (...)``
    assert "ebt_scaling.config" in real["ebt_scaling.fit.design"]


def test_no_import_circles():
    circles = import_circles(import_graph())
    assert not circles, "import circles (move what both sides need into a module both import): " + "; ".join(
        " -> ".join(c) for c in circles)


def test_report_reads_only_the_public_fit_results():
    """The report draws typed results (``ebt_scaling.fit.results``, re-exported by ``ebt_scaling.fit``), never the
    fitting internals (axis, design, guards, ols, saturating)."""
    bad = [f"{path.relative_to(PKG.parent)} imports {imp}" for path in (PKG / "report").rglob("*.py")
           for imp in _imports(path)
           if imp.startswith("ebt_scaling.fit") and imp not in ("ebt_scaling.fit", "ebt_scaling.fit.results")]
    assert not bad, bad


# The db room is split by job (issue 26): a module that grows past this is doing two jobs. engine.py (connection
# set-up, SQLite pragmas, the vanished-file check) is the largest at about 310 lines.
DB_MODULE_LINES = 320


def test_db_modules_stay_small():
    big = {p.name: n for p in sorted((PKG / "db").glob("*.py"))
           if (n := len(p.read_text().splitlines())) > DB_MODULE_LINES}
    assert not big, f"split these db modules by job (limit {DB_MODULE_LINES} lines): {big}"
