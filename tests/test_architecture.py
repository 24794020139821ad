"""The shape of the package, checked: layers, no import cycles, one error policy.

Read from the source with `ast`, so a lazy import inside a function counts as much as one
at the top of a module (only `if TYPE_CHECKING:` imports, which never run, are left out).
The layers and their order are documented in docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "agenta_notebook"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Bottom to top: a module may import from its own layer or a lower one, never higher.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("errors", "forksafe", "memory", "version"),
    ("live",),
    ("collector",),
    ("runtime",),
    ("budget", "capture", "spans", "threads", "views", "io", "integrations", "demo"),
    ("ipython",),
    ("",),  # the package's __init__
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: the bodies of `if TYPE_CHECKING:` are skipped."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str) -> dict[str, set[str]]:
    """The package modules `module` imports (at any depth of its code): name -> names used."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            if not target.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:  # `from package import module`
                    found.setdefault(submodule, set())
                else:
                    found.setdefault(target, set()).add(alias.name)
    found.pop(module, None)
    return found


GRAPH: dict[str, dict[str, set[str]]] = {module: imports_of(module) for module in MODULES}


def layer_of(module: str) -> int:
    relative = module.removeprefix(PACKAGE).removeprefix(".")
    top = relative.split(".", 1)[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """A cycle of the graph as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if state.get(target) is None and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if target in MODULES and layer_of(target) > layer_of(module)
    ]
    assert wrong == []


def test_the_core_imports_nothing_of_the_package_but_itself() -> None:
    core = f"{PACKAGE}.core"
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(core)
        for target in targets
        if not target.startswith(core)
    ]
    assert wrong == []


def test_the_core_holds_no_state_and_takes_no_lock() -> None:
    """No threading, no logging, no module-level mutable containers, no `global`."""
    wrong: list[str] = []
    for module, path in MODULES.items():
        if not module.startswith(f"{PACKAGE}.core"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                wrong += [f"{module} imports {n}" for n in names if n in {"threading", "logging"}]
            if isinstance(node, ast.Global):
                wrong.append(f"{module}:{node.lineno} uses `global`")
        for statement in tree.body:
            value = getattr(statement, "value", None)
            if isinstance(statement, ast.Assign | ast.AnnAssign) and isinstance(
                value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp
            ):
                wrong.append(f"{module}:{statement.lineno} a mutable container at module level")
    assert wrong == []


def test_no_private_name_crosses_a_module_boundary() -> None:
    """`from x import _name` of another module of ours, or `x._name` on a module of ours."""
    wrong: list[str] = []
    for module, targets in GRAPH.items():
        for target, names in targets.items():
            wrong += [
                f"{module} imports {target}.{name}"
                for name in names
                if name.startswith("_") and not name.startswith("__")
            ]
    # `module._private` through a module imported whole (`from agenta_notebook import x`)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {
            alias.asname or alias.name
            for node in _runtime_nodes(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
            if f"{_resolve(module, path.name == '__init__.py', node)}.{alias.name}" in MODULES
        }
        for node in _runtime_nodes(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                wrong.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert wrong == []


_SILENT = re.compile(
    r"except\b\s*(?:(?:Exception|BaseException)\s*(?:as\s+\w+\s*)?)?:[^\n]*\n\s*pass\b"
)


def test_no_exception_is_swallowed_in_silence() -> None:
    """One error policy: `agenta_notebook.errors.internal_error`, or a narrower exception
    turned into a message; never `except Exception: pass` (nor a bare `except: pass`)."""
    wrong = [
        f"{module}:{source[: match.start()].count(chr(10)) + 1}"
        for module, path in MODULES.items()
        for source in [path.read_text(encoding="utf-8")]
        for match in _SILENT.finditer(source)
    ]
    assert wrong == []


def test_the_checks_above_can_fail() -> None:
    """The cycle search and the silence check find what they look for."""
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": set()}) is None
    assert _SILENT.search("try:\n    x()\nexcept Exception:\n    pass\n")
    assert _SILENT.search("try:\n    x()\nexcept:\n    pass\n")
    assert _SILENT.search("try:\n    x()\nexcept Exception:  # why\n    pass\n")
    assert not _SILENT.search("try:\n    x()\nexcept KeyError:\n    pass\n")
    lazy = ast.parse("def f():\n    from agenta_notebook.views import html\n")
    assert any(isinstance(node, ast.ImportFrom) for node in _runtime_nodes(lazy))
    skipped = ast.parse("if TYPE_CHECKING:\n    from agenta_notebook.live import Trace\n")
    assert not any(isinstance(node, ast.ImportFrom) for node in _runtime_nodes(skipped))
