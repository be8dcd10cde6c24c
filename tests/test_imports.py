"""The floors of the house, read from the source: no import cycle among camlens's modules,
nothing outside the command line imports it, the engine imports no framework adapter.

The imports are read with :mod:`ast`; nothing of camlens is imported. Every import counts,
at module level or inside a function (an import moved into a function still ties the two
modules together: move the piece, do not hide the import). Relative imports are resolved;
``from pkg import name`` imports the submodule ``pkg.name`` where there is one, else
``pkg/__init__.py``; importing ``pkg.mod`` from outside ``pkg`` also runs
``pkg/__init__.py`` first, so it imports ``pkg`` too. Only imports under
``if TYPE_CHECKING:`` are left out: they never run.

``camlens/__main__.py`` (``python -m camlens``) belongs to the command line. The engine may
import the package ``camlens._adapters`` (the place for what it asks of any framework),
never a framework's module inside it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# The known offenders that other steps of issue 21 remove, as (importer, the module its
# import statement names). Each is excused from the rules below while it stands; a test
# fails once an entry is no longer needed (the import is gone, or, with the other entries
# excused, it closes no loop and breaks no rule), so this list can only shrink. Delete the
# entries as the steps land; add none.
KNOWN: dict[tuple[str, str], str] = {}

PACKAGE = "camlens"
COMMAND_LINE = ("camlens.cli", "camlens.__main__")  # the top floor (`python -m camlens`)
ENGINE = "camlens._engine"
ADAPTERS = "camlens._adapters"  # its __init__ may hold what the engine asks of a framework


@dataclass(frozen=True)
class Import:
    """One import of ``imported`` by ``importer``: the statement at ``file:line`` names
    ``named`` (``imported`` itself, or a module inside the package ``imported``)."""

    importer: str
    imported: str
    named: str
    file: str
    line: int

    def __str__(self) -> str:
        via = "" if self.named == self.imported else f" (loads it for {self.named})"
        return f"{self.importer} -> {self.imported}{via}  at {self.file}:{self.line}"


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file for every ``.py`` under the package folder ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _named(node: ast.Import | ast.ImportFrom, package: str, modules: Mapping[str, Path],
           ) -> Iterable[str]:
    """The modules an import statement names, relative ones resolved from ``package``
    (the importer's package), each cut back to the nearest module that exists."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            yield name


def read_imports(root: Path) -> list[Import]:
    """Every import between the modules of the package in folder ``root`` (see the module
    docstring for what counts)."""
    modules = _modules(root)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_only(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        file = path.relative_to(root.parent).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skipped:
                continue
            for named in _named(node, package, modules):
                if named != module:
                    found.append(Import(module, named, named, file, node.lineno))
                # the packages above it run first, unless the importer is inside them
                above = named.rpartition(".")[0]
                while above and not _in(module, above):
                    found.append(Import(module, above, named, file, node.lineno))
                    above = above.rpartition(".")[0]
    return sorted(set(found), key=lambda i: (i.importer, i.imported, i.line, i.named))


def strongly_connected(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other in a loop (Tarjan's
    strongly connected components), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(groups)


def _loop(group: list[str], edges: set[tuple[str, str]]) -> list[str]:
    """One shortest loop from the group's first module back to it (breadth-first)."""
    start = group[0]
    came: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(b for a, b in edges if a == node and b in group):
            if child == start:
                chain = []
                while node != start:
                    chain.append(node)
                    node = came[node]
                return [start, *reversed(chain), start]
            if child not in came:
                came[child] = node
                queue.append(child)
    raise AssertionError(f"no loop through {start}")  # a strongly connected group has one


def cycle_report(imports: list[Import]) -> str:
    """Each group of modules in a loop, one loop through it and every import inside it."""
    edges = {(i.importer, i.imported) for i in imports}
    lines = []
    for group in strongly_connected(edges):
        lines.append(f"- {len(group)} modules: {', '.join(group)}")
        lines.append(f"  for example {' -> '.join(_loop(group, edges))}; its imports:")
        lines += [f"    {i}" for i in imports if i.importer in group and i.imported in group]
    return "\n".join(lines)


def _outside_cli(i: Import) -> bool:
    return _in(i.imported, "camlens.cli") and not any(_in(i.importer, c) for c in COMMAND_LINE)


def _engine_adapter(i: Import) -> bool:
    return i.importer == ENGINE and i.imported.startswith(ADAPTERS + ".")


@functools.cache
def _camlens_imports() -> list[Import]:
    spec = importlib.util.find_spec(PACKAGE)  # finds the folder, runs nothing
    assert spec is not None and spec.submodule_search_locations
    return read_imports(Path(next(iter(spec.submodule_search_locations))))


def _unexcused(imports: Iterable[Import]) -> list[Import]:
    """The imports that no entry of ``KNOWN`` excuses."""
    return [i for i in imports if (i.importer, i.named) not in KNOWN]


def test_no_import_cycle():
    report = cycle_report(_unexcused(_camlens_imports()))
    if report:
        pytest.fail("camlens's modules import each other in loops. In each group below, "
                    "move the piece one module takes from another into the room it belongs "
                    "to (a lower module both can import), rather than hiding the import in "
                    "a function:\n" + report, pytrace=False)


def test_nothing_outside_the_command_line_imports_it():
    offenders = [i for i in _unexcused(_camlens_imports()) if _outside_cli(i)]
    if offenders:
        pytest.fail("the library imports the command line (camlens.cli); give the library "
                    "its own piece and let cli/ import that:\n"
                    + "\n".join(f"  {i}" for i in offenders), pytrace=False)


def test_engine_imports_no_framework_adapter():
    offenders = [i for i in _unexcused(_camlens_imports()) if _engine_adapter(i)]
    if offenders:
        pytest.fail(f"{ENGINE} imports a framework adapter; it should reach a framework only "
                    "through the adapter interface:\n"
                    + "\n".join(f"  {i}" for i in offenders), pytrace=False)


def _reaches(edges: Iterable[tuple[str, str]], start: str, goal: str) -> bool:
    """Whether a chain of imports leads from module ``start`` to module ``goal``."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    seen, todo = {start}, [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child == goal:
                return True
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return False


def test_known_offenders_only_shrink():
    """Every entry of KNOWN still names an import that breaks a rule, or that would close a
    loop while the other entries stay excused."""
    imports = _camlens_imports()
    rest = {(i.importer, i.imported) for i in _unexcused(imports)}
    stale = []
    for (importer, named), why in KNOWN.items():
        found = [i for i in imports if (i.importer, i.named) == (importer, named)]
        needed = [i for i in found if _outside_cli(i) or _engine_adapter(i)
                  or _reaches(rest, i.imported, i.importer)]
        if not needed:
            state = ("closes no loop and breaks no rule" if found else "is gone")
            stale.append(f"  ({importer!r}, {named!r}) ({why}): the import {state}")
    if stale:
        pytest.fail("delete these entries of KNOWN in tests/test_imports.py:\n"
                    + "\n".join(stale), pytrace=False)


def test_reading_imports_of_a_small_package(tmp_path: Path):
    """The walk resolves relative and absolute imports, counts imports inside functions and
    the packages an import loads, and leaves out ``TYPE_CHECKING`` imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import f\nfrom . import sub\n",
        "a.py": ("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n"
                 "    from .b import B\n\ndef f():\n    from .sub import c\n"),
        "b.py": "import pkg.sub.c\nfrom pkg import f\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import b\nfrom ..sub import d\nfrom . import d as dd\n",
        "sub/d.py": "from ..a import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    got = {(i.importer, i.imported, i.named, i.line) for i in read_imports(pkg)}
    assert got == {
        ("pkg", "pkg.a", "pkg.a", 1),
        ("pkg", "pkg.sub", "pkg.sub", 2),
        ("pkg.a", "pkg.sub", "pkg.sub.c", 7),
        ("pkg.a", "pkg.sub.c", "pkg.sub.c", 7),
        ("pkg.b", "pkg.sub", "pkg.sub.c", 1),
        ("pkg.b", "pkg.sub.c", "pkg.sub.c", 1),
        ("pkg.b", "pkg", "pkg", 2),
        ("pkg.sub.c", "pkg.b", "pkg.b", 1),
        ("pkg.sub.c", "pkg.sub.d", "pkg.sub.d", 2),
        ("pkg.sub.c", "pkg.sub.d", "pkg.sub.d", 3),
        ("pkg.sub.d", "pkg.a", "pkg.a", 1),
    }
    imports = read_imports(pkg)
    assert strongly_connected((i.importer, i.imported) for i in imports) == [
        ["pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub.d"]]
    report = cycle_report(imports).splitlines()
    assert report[:2] == [
        "- 5 modules: pkg, pkg.a, pkg.b, pkg.sub.c, pkg.sub.d",
        "  for example pkg -> pkg.a -> pkg.sub.c -> pkg.b -> pkg; its imports:"]
    assert "    pkg.sub.c -> pkg.b  at pkg/sub/c.py:1" in report
    assert len(report) == 2 + 8  # the imports inside the group; none to or from pkg.sub
    assert str(imports[2]) == "pkg.a -> pkg.sub (loads it for pkg.sub.c)  at pkg/a.py:7"
