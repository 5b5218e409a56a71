"""The library's floors: every import points down (or sideways), and no module imports itself back through others.

The floors are the ones ``universality_lib/__init__.py`` documents. Two checks:

* reading every module's imports (top-level and inside functions, the "lazy" ones that hid a cycle before) with
  :mod:`ast`: an import of a higher floor, or a cycle among the modules, fails and names the modules;
* a fresh interpreter that imports the floors in order: after importing floor ``k`` no module of a higher floor is
  loaded (what really runs at import time agrees with what the files say).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import universality_lib

PKG = Path(universality_lib.__file__).parent

# the documented floors (universality_lib/__init__.py); a name stands for the module or the package and all below it
FLOORS = [
    ("ground", ["errors", "presets", "runtime", "stats", "cache", "hub", "sources"]),
    ("data and models", ["corpus", "models", "activations"]),
    ("checks on a model", ["circuits", "induction"]),
    ("training and the zoo", ["train", "zoo", "zoo_check"]),
    ("analysis", ["saes", "similarity", "depth", "complexity", "feature_sample", "llm_judge", "explorer"]),
]
TOP = "book and presentation"  # every other module: results, claims, report, book/, plots/, views, cli, ...


def modules() -> list[str]:
    """Every module of the package, dotted below ``universality_lib`` (a package is its ``__init__``)."""
    out = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG)
        if rel.parts[0] == "zoo" and len(rel.parts) > 1:  # shipped checkpoints, not code
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def floor(mod: str) -> int:
    """The floor of a module (its first dotted part decides), ``len(FLOORS)`` for the top."""
    head = mod.split(".")[0]
    for i, (_, names) in enumerate(FLOORS):
        if head in names:
            return i
    return len(FLOORS)


def floor_name(i: int) -> str:
    return FLOORS[i][0] if i < len(FLOORS) else TOP


def imports(mod: str, known: set[str]) -> set[str]:
    """The package's modules that ``mod`` imports anywhere in its file (the package root ``""`` left out)."""
    is_pkg = mod == "" or (PKG / mod.replace(".", "/") / "__init__.py").exists()
    path = PKG / (mod.replace(".", "/") + ("/__init__.py" if is_pkg else ".py")) if mod else PKG / "__init__.py"
    here = mod.split(".") if mod else []
    base = here if is_pkg else here[:-1]  # the package a relative import starts from
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                stem = root + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "universality_lib":
                stem = node.module.split(".")[1:]
            else:
                continue
            targets.append(".".join(stem))
            targets += [".".join(stem + [a.name]) for a in node.names]  # `from . import corpus`
        elif isinstance(node, ast.Import):
            targets += [".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "universality_lib"]
        for t in targets:
            parts = t.split(".") if t else []
            for k in range(1, len(parts) + 1):  # importing a.b runs a/__init__ too
                name = ".".join(parts[:k])
                if name in known and name != mod:
                    out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {m: imports(m, known) for m in known if m}


def test_every_import_points_down_or_sideways():
    upward = [f"{m} ({floor_name(floor(m))}) imports {t} ({floor_name(floor(t))})"
              for m, ts in sorted(graph().items()) for t in sorted(ts) if floor(t) > floor(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle_not_even_through_a_lazy_import():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g.get(m, ())):
            # a package's __init__ importing its own submodules (re-exports) is how a package is built, not a cycle
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_a_fresh_interpreter_importing_the_floors_in_order_loads_nothing_above():
    mods = sorted(m for m in modules() if m and not m.endswith("__main__"))
    order = [[f"universality_lib.{m}" for m in mods if floor(m) == i] for i in range(len(FLOORS))]
    code = f"""
import importlib, json, sys
floors = {json.dumps(order)}
out = []
for i, names in enumerate(floors):
    for n in names:
        importlib.import_module(n)
    out.append(sorted(m for m in sys.modules if m.startswith("universality_lib.")))
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    for i, names in enumerate(loaded):
        above = [n for n in names if floor(n.split(".", 1)[1]) > i]
        assert not above, f"importing the floors up to {floor_name(i)!r} loaded {above}"


def test_the_checks_find_a_planted_upward_import_and_cycle(monkeypatch):
    """Planted answer: the lazy ``corpus -> zoo`` import of before (zoo imports corpus) is named by both checks."""
    import pytest

    real = graph()
    planted = {**real, "corpus": real["corpus"] | {"zoo"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: planted)
    with pytest.raises(AssertionError, match=r"corpus \(data and models\) imports zoo \(training and the zoo\)"):
        test_every_import_points_down_or_sideways()
    with pytest.raises(AssertionError, match=r"import cycles:\n.*corpus -> zoo|zoo -> .*corpus"):
        test_no_import_cycle_not_even_through_a_lazy_import()
