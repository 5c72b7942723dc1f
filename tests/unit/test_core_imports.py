"""Import rules of the house, checked on every module of every package, imports inside functions included:

- core/ is the library: it never imports ray, hydra, omegaconf, actors or apps;
- actors/ (the Ray wrappers) never import apps/ (the Hydra entry points);
- models never import pipelines (diffusers' rule);
- no import cycle between modules, nor between core's subpackages;
- an import inside a function is never redundant: not of the standard library, not of a module the file already
  imports at the top (lazy imports are for heavy or optional packages and for Ray workers).
"""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "actors", "apps", "benchmarks")
RUNNERS = {"ray", "hydra", "omegaconf"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    assert {"core.data.schema", "core.models.backbone", "core.method.apprentice", "core.pipelines.suti"} <= set(found)
    return found


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import in the file. `from pkg import mod` yields
    `pkg.mod` when that is a module of the project, else `pkg`."""
    tree = ast.parse(path.read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    known = modules_cache()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in local, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            out += [(m, id(node) in local, node.lineno) for m in subs or [node.module]]
    return out


_MODULES: dict[str, Path] = {}


def modules_cache() -> dict[str, Path]:
    if not _MODULES:
        _MODULES.update(modules())
    return _MODULES


def graph() -> dict[str, set[str]]:
    mods = modules_cache()
    edges = defaultdict(set)
    for name, path in mods.items():
        for target, _, _ in imports(path):
            # An import of a.b.c also runs a/__init__ and a/b/__init__; the edge that matters is to the module itself.
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + ".") and target not in PACKAGES:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_layer_rules_hold_for_every_import():
    offenders = []
    for name, path in modules_cache().items():
        for target, inside, line in imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {target}" + (" (inside a function)" if inside else "")
            if name.startswith("core") and top in RUNNERS | {"actors", "apps", "benchmarks"}:
                offenders.append(where)
            if name.startswith("actors") and top in {"apps", "benchmarks"}:
                offenders.append(where)
            if name.startswith("core.models") and target.startswith("core.pipelines"):
                offenders.append(where)
    assert not offenders, offenders


def test_no_import_cycle_between_modules():
    assert find_cycle(graph()) is None, find_cycle(graph())


def test_no_import_cycle_between_core_subpackages():
    packages = defaultdict(set)
    for source, targets in graph().items():
        for target in targets:
            a, b = source.split("."), target.split(".")
            if a[0] == b[0] == "core" and len(a) > 2 and len(b) > 2 and a[1] != b[1]:
                packages[f"core.{a[1]}"].add(f"core.{b[1]}")
    assert find_cycle(packages) is None, find_cycle(packages)


def test_imports_inside_functions_are_not_redundant():
    offenders = []
    for path in modules_cache().values():
        found = imports(path)
        at_top = {target for target, inside, _ in found if not inside}
        for target, inside, line in found:
            top = target.split(".")[0]
            if inside and (top in sys.stdlib_module_names or target in at_top):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
    assert not offenders, offenders


def test_importing_core_loads_no_runner_package():
    core = sorted(m for m in modules_cache() if m.startswith("core"))
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in core)
        + (
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'hydra', 'omegaconf'})\n"
            "assert not bad, bad\n"
        )
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_says_what_lives_there():
    for init in sorted((ROOT / "core").rglob("__init__.py")):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no docstring"
