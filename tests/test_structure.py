"""The package's import structure, read from the source with ``ast`` (every import, also those inside functions):

* no import cycles among the modules of ``glean_jax`` and ``convert``;
* the package never imports the test suite (``tests``);
* torch is imported only under ``convert/`` and by ``glean_jax/mmagic_reference.py`` (the mmagic reference).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("glean_jax", "convert")
TORCH_ALLOWED = ("convert/", "glean_jax/mmagic_reference.py")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods = _modules()
    assert "glean_jax.training.loop" in mods and "convert.mmagic" in mods
    graph = {m: {n for n in _imports(p) if n in mods and n != m} for m, p in mods.items()}
    assert _cycles(graph) == []
    # the check itself: a cycle made by hand is found
    assert _cycles({**graph, "convert.mapping": graph["convert.mapping"] | {"convert.mmagic"}})


def test_package_never_imports_the_tests():
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n == "tests" or n.startswith("tests."))
           for p in _modules().values()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_torch_only_in_the_converters_and_the_mmagic_reference():
    users = sorted(str(p.relative_to(ROOT)) for p in _modules().values()
                   if any(n == "torch" or n.startswith("torch.") for n in _imports(p)))
    assert "glean_jax/mmagic_reference.py" in users and any(u.startswith("convert/") for u in users)
    assert [u for u in users if not u.startswith(TORCH_ALLOWED)] == []
