"""The package's shape budgets (docs/architecture.md), checked on its source.

- no module over ``MODULE_LINES`` lines,
- no function over ``FUNCTION_LINES`` lines of code (its docstring not counted),
- no import cycle between the package's folders (a top-level module counts as one),
- no import cycle between the package's modules (imports inside functions
  and ``TYPE_CHECKING`` blocks count too: a lazy import hides a cycle, it
  does not remove it),
- no module importing another module's private (``_``) names.

``python tests/test_architecture.py`` prints the measurements.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator

PACKAGE = "dask_batchinfer"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
MODULE_LINES = 400
FUNCTION_LINES = 60


def modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")]
                dotted = rel.replace(os.sep, ".").removesuffix(".__init__")
                found[dotted] = path
    return dict(sorted(found.items()))


def _tree(path: str) -> ast.Module:
    with open(path) as f:
        return ast.parse(f.read(), path)


def imports(name: str, path: str, known: set[str]) -> Iterator[tuple[str, str | None, int]]:
    """``(module imported, name imported or None, line)`` for the package's own modules."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield _owner(alias.name, known), None, node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in known:  # a submodule
                    yield target, None, node.lineno
                else:
                    yield _owner(node.module or "", known), alias.name, node.lineno


def _owner(dotted: str, known: set[str]) -> str:
    while dotted not in known and "." in dotted:
        dotted = dotted.rsplit(".", 1)[0]
    return dotted


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for target, _, _ in imports(name, path, known):
            # a package's __init__ re-exports its modules: importing it is not a cycle
            # with them, but importing a module from inside it is
            if target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def folder_graph() -> dict[str, set[str]]:
    """The import graph between the package's folders (a top-level module is its own node)."""
    folders = {n.split(".")[1] for n in modules() if n.count(".") >= 2}

    def node(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in folders else name

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(node(name), set()).update(
            node(t) for t in targets if node(t) != node(name)
        )
    return graph


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = import_graph() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports() -> list[str]:
    found = modules()
    known = set(found)
    bad = []
    for name, path in found.items():
        for target, imported, line in imports(name, path, known):
            if imported and imported.startswith("_") and target != name:
                if target == f"{PACKAGE}._config" or imported == "__version__":
                    continue
                bad.append(f"{name}:{line} imports {target}.{imported}")
            if target.rsplit(".", 1)[-1].startswith("_") and target != f"{PACKAGE}._config":
                bad.append(f"{name}:{line} imports private module {target}")
    return bad


def function_lengths() -> list[tuple[int, str]]:
    """``(lines of code, qualified name)`` of every function, docstrings left out."""
    lengths = []
    for name, path in modules().items():
        tree = _tree(path)

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body = child.body
                    first = body[0]
                    if (
                        isinstance(first, ast.Expr)
                        and isinstance(first.value, ast.Constant)
                        and isinstance(first.value.value, str)
                        and len(body) > 1
                    ):
                        start = body[1].lineno
                    else:
                        start = first.lineno
                    decorators = child.decorator_list
                    head = decorators[0].lineno if decorators else child.lineno
                    signature = first.lineno - head  # the def line(s)
                    size = signature + (child.end_lineno or start) - start + 1
                    lengths.append((size, f"{prefix}{child.name}"))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(tree, f"{name}:")
    return sorted(lengths, reverse=True)


def module_lengths() -> list[tuple[int, str]]:
    sizes = []
    for name, path in modules().items():
        with open(path) as f:
            sizes.append((sum(1 for _ in f), name))
    return sorted(sizes, reverse=True)


def test_no_import_cycles():
    assert cycles() == []


def test_no_import_cycles_between_folders():
    """model/ below pipeline/ below job/: no folder imports one that imports it back."""
    assert cycles(folder_graph()) == []


#: The data flow, bottom up: a place imports only places below it. Top-level
#: modules not named here (errors, _config, secrets, ...) sit at the bottom,
#: except the public face and the lazy path at the top.
LAYERS = "worker io model pipeline cluster report job cli testing predict __main__".split()
TOP = PACKAGE


def layer(node: str) -> int:
    """A node of :func:`folder_graph`'s floor in :data:`LAYERS` (0: the base modules)."""
    if node == TOP:
        return len(LAYERS) + 1
    name = node.split(".")[1]
    return LAYERS.index(name) + 1 if name in LAYERS else 0


def upward_imports() -> list[str]:
    """``a -> b`` for every folder-level import that does not run down the data flow
    (base modules import only each other)."""
    found = []
    for a, targets in sorted(folder_graph().items()):
        for b in sorted(targets):
            if layer(b) >= layer(a) and not layer(a) == layer(b) == 0:
                found.append(f"{a} -> {b}")
    return found


def test_folders_import_only_down_the_data_flow():
    """worker/ < io/ < model/ < pipeline/ < cluster/ < report/ < job/ < cli/: never upwards."""
    assert upward_imports() == []


def test_no_private_imports_across_modules():
    assert private_imports() == []


def test_modules_within_budget():
    assert [m for m in module_lengths() if m[0] > MODULE_LINES] == []


def test_functions_within_budget():
    assert [f for f in function_lengths() if f[0] > FUNCTION_LINES] == []


if __name__ == "__main__":
    out = sys.stdout
    out.write("modules (lines):\n")
    for size, name in module_lengths():
        out.write(f"  {size:5d}  {name}\n")
    out.write(f"  {sum(s for s, _ in module_lengths()):5d}  total\n")
    out.write("longest functions (lines of code, docstring excluded):\n")
    for size, name in function_lengths()[:12]:
        out.write(f"  {size:5d}  {name}\n")
    out.write(f"import cycles: {cycles()}\n")
    out.write(f"folder cycles: {cycles(folder_graph())}\n")
    out.write(f"upward imports: {upward_imports()}\n")
    out.write("private imports:\n" + "".join(f"  {p}\n" for p in private_imports()))
