"""The package's shape, as ratchets: import cycles and oversized modules may only go away.

The import graph is read from the source with ``ast`` (no module is imported): an edge
``a -> b`` for every ``import``/``from ... import`` in ``a`` that names the package module
``b``, at module level *and* inside functions (a function-local import closes a cycle at run
time just as well; ``if TYPE_CHECKING:`` blocks are left out).  A cycle is a strongly
connected component of that graph with more than one module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "policygradex"

#: The import cycles that remain, as sets of modules (names without the package prefix).  This
#: list may only shrink: a new cycle fails the test, and so does an entry that no longer is one.
ALLOWED_CYCLES: set[frozenset[str]] = set()

#: A module may have at most this many lines ...
MAX_LINES = 600
#: ... except these oversized modules, each held at its current size until it is split (none left).
#: Lower a limit when a module shrinks; remove the entry once it is at or under MAX_LINES.
OVERSIZED: dict[str, int] = {}


def _module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(src: Path = SRC, pkg: str = PKG) -> dict[str, Path]:
    return {_module_name(src, p): p for p in sorted((src / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _owner(dotted: str, modules: dict[str, Path]) -> str | None:
    """The package module that defines ``dotted`` (itself, or the nearest enclosing module)."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path], pkg: str) -> set[str]:
    """The package modules that ``node`` (in ``module``) imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names if alias.name.split(".")[0] == pkg]
        return {m for m in (_owner(n, modules) for n in names) if m}
    if node.level:  # relative: `from ..x import y` counts from the module's package
        package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != pkg:
        return set()
    out = set()
    for alias in node.names:  # `from . import artifacts` imports the submodule itself
        target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _owner(base, modules)
        if target:
            out.add(target)
    return out


@lru_cache(maxsize=None)
def import_graph(src: Path = SRC, pkg: str = PKG) -> dict[str, frozenset[str]]:
    """``module -> modules it imports`` within the package (top-level and function-local)."""
    modules = _modules(src, pkg)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            graph[name] |= _targets(name, node, modules, pkg) - {name}
    return {name: frozenset(graph[name]) for name in modules}


def _reachable(graph: dict[str, frozenset[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def import_cycles(src: Path = SRC, pkg: str = PKG) -> set[frozenset[str]]:
    """The strongly connected components with more than one module, names without the prefix."""
    graph = import_graph(src, pkg)
    reach = {m: _reachable(graph, m) for m in graph}
    cycles = set()
    for m in graph:
        component = frozenset(n for n in reach[m] if m in reach[n])
        if len(component) > 1:
            cycles.add(frozenset(n.removeprefix(f"{pkg}.") for n in component))
    return cycles


def _show(cycles) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in sorted(cycles, key=sorted))


def test_the_graph_on_a_small_package(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .sub import c\n",              # submodule by name; from a module
        "b.py": "def f():\n    from .a import x\n",                   # function-local: b -> a
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.sub.d as dd\nfrom ..b import f\n",     # absolute; relative, two levels
        "sub/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\n",  # ignored
        "sub/e.py": "class K:\n    def m(self):\n        from pkg.sub import e2\n",
        "sub/e2.py": "from .e import K\nimport os\n",                  # method-local: e <-> e2
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.sub.d", "pkg.b"}
    assert graph["pkg.sub.d"] == set()
    # a -> b -> a, and a -> sub.c -> b -> a; d's TYPE_CHECKING import of c closes nothing
    assert import_cycles(tmp_path, "pkg") == {frozenset({"a", "b", "sub.c"}), frozenset({"sub.e", "sub.e2"})}


def test_no_new_import_cycles() -> None:
    new = {c for c in import_cycles() if c not in ALLOWED_CYCLES}
    assert not new, (f"new import cycle(s): {_show(new)}; move what both sides share into a module both can "
                     "import (a function-local import does not break a cycle)")


def test_allowed_cycles_are_still_cycles() -> None:
    gone = ALLOWED_CYCLES - import_cycles()
    assert not gone, f"no longer a cycle, remove from ALLOWED_CYCLES: {_show(gone)}"


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_module_sizes() -> None:
    sizes = {name.removeprefix(f"{PKG}."): _lines(path) for name, path in _modules().items()}
    assert set(OVERSIZED) <= set(sizes), f"OVERSIZED names missing modules: {sorted(set(OVERSIZED) - set(sizes))}"
    too_big = {m: n for m, n in sizes.items() if n > OVERSIZED.get(m, MAX_LINES)}
    assert not too_big, (f"module(s) over their line limit ({MAX_LINES}, or the OVERSIZED entry): {too_big}; "
                         "split by job instead of growing")
    fixed = {m: sizes[m] for m in OVERSIZED if sizes[m] <= MAX_LINES}
    assert not fixed, f"now at most {MAX_LINES} lines, remove from OVERSIZED: {fixed}"
    shrunk = {m: sizes[m] for m in OVERSIZED if sizes[m] < OVERSIZED[m]}  # the ratchet: a shrink is kept
    assert not shrunk, f"smaller than their OVERSIZED limit, lower the limit to: {shrunk}"


#: A function's body (its docstring left out) may have at most this many lines ...
MAX_FUNCTION_LINES = 80
#: ... unless its first statement after the docstring is a comment saying why it is long.
WHY_LONG = "on purpose"


def long_functions(src: Path = SRC, pkg: str = PKG) -> dict[str, int]:
    """``module.function`` -> body lines, for every function longer than MAX_FUNCTION_LINES that does
    not open with a comment saying why (one containing WHY_LONG)."""
    out = {}
    for name, path in _modules(src, pkg).items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str)
            first = body[1] if has_doc and len(body) > 1 else body[0]
            start = (body[0].end_lineno + 1) if has_doc else first.lineno
            n = node.end_lineno - start + 1
            opening = "\n".join(lines[start - 1:first.lineno - 1])  # comments between the docstring and the code
            if n > MAX_FUNCTION_LINES and WHY_LONG not in opening:
                out[f"{name.removeprefix(pkg + '.')}.{node.name}"] = n
    return out


def test_the_long_function_scanner(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (pkg / "m.py").write_text(f'def long():\n    """Doc."""\n{body}\n\n\ndef why():\n    """Doc."""\n'
                              f'    # kept whole {WHY_LONG}\n{body}\n\n\ndef short():\n    """Doc."""\n    return 1\n')
    assert long_functions(tmp_path, "pkg") == {"m.long": MAX_FUNCTION_LINES + 1}


def test_no_long_functions_without_a_reason() -> None:
    assert long_functions() == {}, f"split these, or open them with a comment saying why they are long ('{WHY_LONG}')"


#: Modules that may import package modules inside functions, and why; everywhere else such an
#: import only hides a cycle or a slow import and belongs at module level.  Counts may only shrink,
#: except for a new command's own start-up import in cli (evaluate --plot's MORL indicators, run --policy's import, export).
LOCAL_IMPORTS_ALLOWED: dict[str, tuple[int, str]] = {
    "cli": (38, "start-up: --help and a bad option answer before torch, pymoo, SB3 and the pipeline are imported"),
    "tasks.builtin": (3, "highway-env and metaworld are imported only for their suites"),
    "tasks.loader": (1, "metaworld is imported only for metaworld: suites"),
}


def _local_package_imports(path: Path) -> int:
    count = 0
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == PKG):
                    count += 1
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == PKG for a in node.names):
                    count += 1
    return count


def test_package_modules_are_imported_at_module_level() -> None:
    counts = {name.removeprefix(f"{PKG}."): _local_package_imports(path) for name, path in _modules().items()}
    over = {m: n for m, n in counts.items() if n > LOCAL_IMPORTS_ALLOWED.get(m, (0, ""))[0]}
    assert not over, (f"function-local imports of package modules: {over}; import them at module level (a cycle "
                      "needs a shared module, not a local import)")
    stale = {m: counts.get(m, 0) for m, (n, _) in LOCAL_IMPORTS_ALLOWED.items() if counts.get(m, 0) < n}
    assert not stale, f"fewer local imports than allowed, lower LOCAL_IMPORTS_ALLOWED to: {stale}"


# ---------------------------------------------------------------------------------------------
# Copied blocks.  A block of six or more identical code lines in two places of the package is
# one change that has to be made twice; shared code lives in one function.  Lines are compared
# stripped, without blank lines, comments or docstring-only lines; windows of little text
# (closing brackets, `return x`) are not counted.

WINDOW = 6
MIN_WINDOW_CHARS = 120


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((no, s))
    return out


def repeated_blocks(root: Path) -> list[tuple[str, str]]:
    """Pairs of places ("file:line") where the same WINDOW code lines appear."""
    seen: dict[tuple[str, ...], str] = {}
    pairs = []
    for path in sorted(root.rglob("*.py")):
        lines = _code_lines(path)
        last_reported = -WINDOW
        for i in range(len(lines) - WINDOW + 1):
            window = tuple(s for _, s in lines[i:i + WINDOW])
            if sum(map(len, window)) < MIN_WINDOW_CHARS or any(s.startswith(('"""', "'''")) for s in window):
                continue
            here = f"{path.relative_to(root)}:{lines[i][0]}"
            if window in seen and i - last_reported >= WINDOW:
                pairs.append((seen[window], here))
                last_reported = i
            seen.setdefault(window, here)
    return pairs


def test_the_block_scanner_finds_a_copy(tmp_path: Path) -> None:
    block = "".join(f"value_{i} = compute_something_long(argument_{i}, other_{i})\n" for i in range(7))
    (tmp_path / "a.py").write_text("import x\n" + block)
    (tmp_path / "b.py").write_text("def f():\n    pass\n" + block)
    (tmp_path / "c.py").write_text(block.replace("value_3", "other_name"))
    found = repeated_blocks(tmp_path)
    assert [(a.split(":")[0], b.split(":")[0]) for a, b in found] == [("a.py", "b.py")]


def test_no_copied_blocks_in_the_package() -> None:
    assert repeated_blocks(SRC / PKG) == []
