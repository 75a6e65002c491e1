"""The package's layout: imports point down, and private names stay in their module.

Every ``src/dpo_fast/**/*.py`` is parsed with ``ast``; each ``import`` and ``from ... import``
(at module level or inside a function: lazy imports count) is an edge to the module it names
(``from dpo_fast import benchmark`` names ``dpo_fast.benchmark``; ``from dpo_fast import
__version__`` names the package ``dpo_fast``). Importing a submodule also runs its parents'
``__init__``, but that is Python's doing, not a dependency the module chose, so it is not an
edge.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dpo_fast"

pytestmark = pytest.mark.skipif(not PACKAGE.is_dir(), reason="needs the source tree (src/)")


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, pathlib.Path]) -> bool:
    return modules[name].name == "__init__.py"


def _compiled(name: str) -> bool:
    """Whether ``name`` is a compiled extension module of the package (no .py)."""
    *parents, last = name.split(".")
    folder = SRC.joinpath(*parents)
    return folder.is_dir() and any(path.suffix in (".so", ".pyd", ".pyx")
                                   for path in folder.glob(last + ".*"))


def _imports(name: str, modules: dict[str, pathlib.Path]) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import in ``name``."""
    tree = ast.parse(modules[name].read_text(), str(modules[name]))
    here = name if _is_package(name, modules) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in modules:
                    found.append((candidate, None))  # a submodule
                elif _compiled(candidate):
                    continue  # an extension module: imports nothing of the package's Python
                else:
                    found.append((base, alias.name))
    return [(module, imported) for module, imported in found
            if module == "dpo_fast" or module.startswith("dpo_fast.")]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name in modules:
        targets = set()
        for module, _ in _imports(name, modules):
            # A compiled extension (dpo_fast._entry, dpo_fast._kernels._pairwise) has no .py:
            # it imports nothing of the package's Python modules.
            if module in modules and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_walk_sees_lazy_imports():
    graph = _graph()
    # dpo_fast.cli imports dpo_fast.dask inside a function (for --scheduler only).
    assert "dpo_fast.dask" in graph["dpo_fast.cli"]
    assert "dpo_fast.score.cli" in graph["dpo_fast.cli"]
    assert {"dpo_fast.score.summary", "dpo_fast.score.columns"} <= graph["dpo_fast.dask"]


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_the_scorer_never_imports_its_adapters():
    graph = _graph()
    scorer = [name for name in graph if name == "dpo_fast.score"
              or name.startswith("dpo_fast.score.")]
    assert len(scorer) >= 10
    for name in scorer:
        assert not graph[name] & {"dpo_fast.dask", "dpo_fast.cli"}, name


def test_the_scorer_modules_stay_small():
    for name, path in _modules().items():
        if name == "dpo_fast.score" or name.startswith("dpo_fast.score."):
            assert len(path.read_text().splitlines()) <= 650, name


@pytest.mark.parametrize("importer", ["dpo_fast.score", "dpo_fast.dask", "dpo_fast.cli"])
def test_private_names_stay_in_their_module(importer):
    """The scorer's modules, and the adapters over them, import only public names of other
    modules of the package (a private *module* such as dpo_fast._optional is imported as a
    whole)."""
    modules = _modules()
    names = [name for name in modules
             if name == importer or name.startswith(importer + ".")]
    for name in names:
        for module, imported in _imports(name, modules):
            if imported is not None:
                assert not imported.startswith("_") or imported == "__version__", (
                    f"{name} imports the private {module}.{imported}")
        # No reaching into a module for its private attributes either (``score._x``).
        tree = ast.parse(modules[name].read_text())
        aliases = {alias.asname or alias.name for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                       "dpo_fast.score") for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in aliases and node.attr.startswith("_"):
                pytest.fail(f"{name} uses {node.value.id}.{node.attr}")


def test_the_cycle_search_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_summary_arithmetic_is_pure_numpy():
    """What dpo_fast.dask needs of the scorer: no pyarrow, no readers or writers."""
    modules = _modules()
    tree = ast.parse(modules["dpo_fast.score.summary"].read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "collections", "dataclasses", "typing", "numpy",
                        "dpo_fast"}
    assert _graph()["dpo_fast.score.summary"] == {"dpo_fast.score.errors"}
