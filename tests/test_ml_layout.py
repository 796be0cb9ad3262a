"""mlops_assets.ml is pure ML code: importing any of its modules imports no Dagster and no asset
module (the spec package and keys.py, the shared names, are not asset modules), and the suite's
modules import each other without a cycle (checked on the source with ast, so lazy imports
inside functions count too)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlops_assets", "mlops_resources")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def suite_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


ML_MODULES = sorted(m for m in suite_modules() if m == "mlops_assets.ml" or ".ml." in m)


def imported(name: str, path: Path, known: set[str], *, lazy: bool = True) -> set[str]:
    """The suite modules `path` imports: at module level and, with `lazy`, inside functions
    (imports under `if TYPE_CHECKING:` are for annotations only and do not count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not lazy:
                continue
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [base, *(f"{base}.{a.name}" for a in child.names)]
            else:
                walk(child)
                continue
            found.update(t for t in targets if t in known and t != name)

    walk(ast.parse(path.read_text()))
    return found


def cycles(*, lazy: bool) -> list[set[str]]:
    """The strongly connected components (of more than one module) of the import graph; a
    package's __init__ is left out (it imports lazily, and every submodule imports it)."""
    modules = suite_modules()
    graph = {
        name: {
            t
            for t in imported(name, path, set(modules), lazy=lazy)
            if modules[t].name != "__init__.py"
        }
        for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


@pytest.mark.parametrize("module", ML_MODULES)
def test_ml_module_imports_no_dagster_and_no_asset_module(module):
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]\n"
        "assets = [m for m in sys.modules if m.startswith('mlops_assets.') and "
        "not m.startswith(('mlops_assets.ml', 'mlops_assets.spec', 'mlops_assets.keys'))]\n"
        "print(bad[:3], assets)\n"
        "sys.exit(1 if bad or assets else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{module} imports {done.stdout}{done.stderr}"


def test_ml_imports_no_asset_module_even_lazily():
    modules = suite_modules()
    for name in ML_MODULES:
        for target in imported(name, modules[name], set(modules)):
            allowed = target.startswith(
                ("mlops_assets.ml", "mlops_assets.spec", "mlops_resources.")
            )
            # keys.py holds names only and imports no Dagster at module level
            named = target in ("mlops_assets", "mlops_assets.keys")
            assert allowed or named, f"{name} imports {target}"


def test_no_import_cycle_at_module_level():
    assert cycles(lazy=False) == []


# The stage modules and the ml package take part in no cycle, not even through an import inside
# a function (training imported governance, which imported training back).
STAGES = ("data", "validation", "features", "training", "promotion", "inference", "monitoring")


def test_no_cycle_through_ml_or_a_stage_even_lazily():
    stages = {f"mlops_assets.{s}" for s in STAGES}
    for component in cycles(lazy=True):
        involved = {m for m in component if m in stages or m.startswith("mlops_assets.ml")}
        involved |= {m for m in component if m.startswith("mlops_assets.governance")}
        assert not involved, f"import cycle through {sorted(component)}"


@pytest.mark.parametrize("module", ["mlops_assets.ml", "mlops_resources"])
def test_package_docstring_example_runs(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted and not result.failed
