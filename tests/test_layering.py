"""The package's layering: runtime imports between subpackages form a DAG in a fixed order, nothing imports the
command line, and no module imports another module's private names.

Imports inside ``if TYPE_CHECKING:`` are annotations only (they never run, so they cannot form a cycle) and are
how a lower layer annotates a parameter with a higher layer's class (``model: CircuitModel``); they are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import circuits

PACKAGE = Path(circuits.__file__).parent
# Lowest first: a package may import only packages listed before it (and the top-level facade for __version__).
LAYERS = ["tasks", "interventions", "session", "graph", "models", "evaluation", "discovery", "plotting", "zoo",
          "sweeps", "cli"]
# Top-level modules below every layer (they import nothing of the package): the base error type.
FOUNDATION = ["errors"]


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks, function-level ones included."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def _imports() -> list[tuple[str, str, str, list[str], int]]:
    """(importing subpackage, file, imported module, names, line) for every runtime import of circuits.*"""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        pkg = rel.parts[0] if len(rel.parts) > 1 else ""
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "circuits":
                out.append((pkg, str(rel), node.module, [a.name for a in node.names], node.lineno))
            elif isinstance(node, ast.Import):
                out += [(pkg, str(rel), a.name, [], node.lineno) for a in node.names if a.name.startswith("circuits")]
    return out


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS)


def test_runtime_imports_only_go_down_the_layers():
    upward = []
    for pkg, path, module, names, line in _imports():
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else ""
        if not pkg or target == pkg:
            continue
        if target == "":  # the facade: the command line may use it; below it, only its version string
            if pkg != "cli" and names != ["__version__"]:
                upward.append(f"{path}:{line} imports {names} from the circuits facade")
            continue
        if target in FOUNDATION:
            continue
        if target not in LAYERS or LAYERS.index(target) > LAYERS.index(pkg):
            upward.append(f"{path}:{line} ({pkg}) imports {module}")
    assert not upward, "\n".join(upward)


def test_no_private_names_cross_modules():
    private = [f"{path}:{line} imports {n} from {module}" for _, path, module, names, line in _imports()
               for n in names if n.startswith("_") and n != "__version__"]
    assert not private, "\n".join(private)


def test_foundation_imports_nothing_of_the_package():
    for name in FOUNDATION:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert not [n for n in _runtime_imports(tree) if isinstance(n, ast.ImportFrom) and n.module
                    and n.module.startswith("circuits")], f"circuits/{name}.py must import nothing of the package"
