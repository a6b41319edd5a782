"""The package's layers only point down: no import cycle among `ce_gppo_trl`'s modules, and no module but the `ce-gppo`
entry point (`__main__`) imports the command line (`cli`).

The import graph is read from the source with `ast`, not from `sys.modules`: every `import` and `from ... import`,
relative or absolute, at module level, inside functions and under `TYPE_CHECKING` alike, so that an import deferred
into a function (which hides a cycle until the function runs) still counts. Imports by `importlib.import_module`
(the lazy names of `__init__`, the `eval` / `plot` commands of `cli.main`) are strings to `ast` and not seen.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ce_gppo_trl"
NAME = PACKAGE.name


def module_key(dotted: str) -> str:
    """`ce_gppo_trl.losses` -> `losses`; the package itself is its `__init__`."""
    return "__init__" if dotted == NAME else dotted.removeprefix(f"{NAME}.")


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every `*.py` file directly in `package`."""
    modules = {f"{NAME}.{path.stem}" for path in package.glob("*.py")} | {NAME}

    def ours(dotted: str) -> str | None:
        # The longest prefix that is one of the package's modules: `ce_gppo_trl.toy.build_toy_model` -> `...toy`.
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(filter(None, (ours(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                # Every module sits directly in the package, so `from .x import y` (level 1) is `ce_gppo_trl.x`.
                assert node.level <= 1, f"{path.name}:{node.lineno} imports from above the package"
                base = (NAME + (f".{node.module}" if node.module else "")) if node.level else node.module
                # `from . import toy` imports the module `toy`; `from . import __version__` the package's `__init__`.
                imported.update(filter(None, (ours(f"{base}.{alias.name}") for alias in node.names)))
        graph[module_key(f"{NAME}.{path.stem}")] = {module_key(name) for name in imported} - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


GRAPH = import_graph()


def test_the_graph_is_read_from_the_whole_source():
    assert not list(PACKAGE.glob("*/*.py")), "a subpackage: extend import_graph to its modules"
    assert len(GRAPH) > 20 and {"__init__", "__main__", "cli", "losses", "trainer"} <= set(GRAPH)
    assert sum(map(len, GRAPH.values())) > 30
    assert "cli" in GRAPH["__main__"]  # inside main()
    # cli imports trainer, rewards and data inside functions.
    assert {"trainer", "rewards", "data", "builtin_models", "optional"} <= GRAPH["cli"]
    assert "__init__" in GRAPH["cli"]  # `from . import __version__`
    assert "toy" in GRAPH["testbed"]  # `from . import toy`
    assert "config" in GRAPH["builtin_models"]  # under TYPE_CHECKING
    # validation (the one error form) is a leaf below the pure math.
    assert GRAPH["losses"] <= {"validation"} and GRAPH["validation"] == set() and GRAPH["optional"] == set()


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({name: targets - {"a"} for name, targets in graph.items()}) == [["e", "f"]]


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles (modules that import each other, directly or through others): " + "; ".join(
        " <-> ".join(component) for component in found
    )


def test_only_the_entry_point_imports_the_command_line():
    importers = sorted(name for name, targets in GRAPH.items() if "cli" in targets)
    assert importers == ["__main__"], (
        f"modules that import cli (the command line uses the library, never the reverse): {importers}"
    )
