"""The package's layers, checked on its folders: which part may import which, and what stays light.

A part is a sub-package (``engine/``, ``cache/``...) or, for the top-level modules, the
vocabulary (``types``, ``errors``, ``config``) or a public face (``minima_nb``, ``testing``,
and the edge modules users import by name). Imports are read from the source, lazy ones
included, so a function-level import cannot slip past.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minima_nb"
VOCABULARY = {"_version", "types", "errors", "environment", "config", "controls"}
FACES = {"__init__", "testing", "proxy", "dspy_adapter", "dask", "backend", "protocol", "batch"}
# What each part may import of ours (besides itself). Edges (integrations) are leaves: only the
# faces, the CLI and the accessor's delegating methods import them.
MAY_IMPORT = {
    "vocabulary": set(),
    "cache": {"vocabulary"},
    "engine": {"vocabulary", "cache"},  # only engine/backend*.py, and only the cache's face
    "export": {"vocabulary", "cache"},
    "servers": {"vocabulary", "engine", "cache", "compat"},
    "compat": {"vocabulary", "engine", "cache"},
    "notebook": {"vocabulary", "engine", "cache", "export", "integrations"},
    "integrations": {"vocabulary", "engine", "cache", "export", "notebook", "servers", "compat"},
    "cli": {"face", "vocabulary", "engine", "cache", "export", "notebook", "servers", "integrations", "compat"},
}
# Methods that only hand over to an edge, loaded when called: module -> the edge it may import.
DELEGATES = {"engine.spellings": "integrations.batchapi.mode"}  # backend.batch_mode()
BELOW_NOTEBOOK = {"vocabulary", "engine", "cache", "servers", "compat"}
HEAVY = {"pandas", "pyarrow", "numpy", "ipywidgets", "tqdm", "IPython", "dspy", "dask", "distributed"}
MAX_LINES = 420  # "a module under ~400 lines": past that, split by concept


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(dotted: str) -> str:
    head = dotted.split(".")[0]
    if "." not in dotted and (PACKAGE / f"{head}.py").exists():
        if head in VOCABULARY:
            return "vocabulary"
        return "face"
    return head or "face"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, is it one of ours) for every import in ``path``; ours made absolute."""
    here = _dotted(path).split(".") if _dotted(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                if node.module is None:  # from . import x: each name is a module
                    found += [(f"{module}.{a.name}".strip("."), True) for a in node.names]
                else:
                    found.append((module, True))
            elif node.module and node.module.split(".")[0] == "minima_nb":
                found.append((node.module[len("minima_nb."):], True))
            elif node.module:
                found.append((node.module, False))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                ours = alias.name.split(".")[0] == "minima_nb"
                found.append((alias.name[len("minima_nb."):] if ours else alias.name, ours))
    return found


MODULES = _modules()
IDS = [_dotted(p) or "__init__" for p in MODULES]


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_parts_import_only_what_they_may(path):
    """Each part imports only the parts below it; faces and the CLI may import anything."""
    part = _part(_dotted(path))
    if part == "face":
        return
    for module, ours in _imports(path):
        if not ours or not module:
            continue
        target = _part(module)
        if DELEGATES.get(_dotted(path)) == module:
            continue
        assert target == part or target in MAY_IMPORT[part], f"{_dotted(path)} imports {module}"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_engine_and_cache_meet_only_in_the_backend(path):
    """The cache never imports the engine; only the backend imports the cache, and only its face."""
    dotted = _dotted(path)
    for module, ours in _imports(path):
        if not ours:
            continue
        if dotted.startswith("cache"):
            assert not module.startswith("engine"), f"{dotted} imports {module}"
        if not dotted.startswith("cache"):
            assert not module.startswith("cache."), (
                f"{dotted} imports the cache's internals ({module}); use minima_nb.cache")
        if dotted.startswith("engine") and module == "cache":
            assert dotted.startswith("engine.backend"), f"{dotted} imports the cache"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_edges_are_leaves(path):
    """Only the faces, the CLI and the accessor import the edges (batch API, DSPy, Dask)."""
    dotted = _dotted(path)
    if _part(dotted) in {"face", "cli", "integrations"} or dotted == "notebook.accessor":
        return
    edges = [m for m, ours in _imports(path) if ours and m.startswith("integrations")]
    assert edges in ([], [DELEGATES.get(dotted)])


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_below_the_notebook_nothing_heavy(path):
    """Vocabulary, engine, cache and servers never import pandas, pyarrow, widgets, tqdm, DSPy or Dask."""
    if _part(_dotted(path)) not in BELOW_NOTEBOOK:
        return
    heavy = {m.split(".")[0] for m, ours in _imports(path) if not ours} & HEAVY
    assert heavy == set()


def test_no_import_cycles():
    """The module import graph has no cycle (lazy imports included)."""
    graph = {_dotted(p): {m for m, ours in _imports(p) if ours} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:  # a name imported from a package face resolves to the face
                continue
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                # A package face importing its own modules is not a cycle of layers.
                if not all(n == nxt or n.startswith(nxt + ".") for n in cycle):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_module_has_docstring_and_stays_small(path):
    """Every module says what it owns, and stays under about 400 lines."""
    source = path.read_text()
    assert ast.get_docstring(ast.parse(source))
    assert source.count("\n") <= MAX_LINES


@pytest.mark.parametrize("name", sorted(f for f in FACES if (PACKAGE / f"{f}.py").exists() and f != "__init__"))
def test_faces_only_re_export(name):
    """A public face module holds imports and ``__all__`` only: its code lives in its part."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    for node in tree.body[1:]:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign)), ast.dump(node)[:80]


def test_public_api_is_sorted_and_importable():
    """__all__ is sorted and every name in it imports from the package."""
    import minima_nb

    assert minima_nb.__all__ == sorted(minima_nb.__all__)
    for name in minima_nb.__all__:
        assert hasattr(minima_nb, name), name
        assert name in dir(minima_nb)


def test_public_paths_stay():
    """The import paths users and their code rely on keep working."""
    from minima_nb.cli import main
    from minima_nb.export import CacheView, open_cache, view
    from minima_nb.testing import MockServer

    assert callable(main) and callable(open_cache) and callable(view) and CacheView and MockServer
    import minima_nb

    assert minima_nb.open_cache is open_cache


def test_import_is_cheap():
    """``import minima_nb`` loads nothing heavy beyond what ``import pandas`` loads itself."""
    code = (
        "import sys, pandas\n"
        "before = set(sys.modules)\n"
        "import minima_nb\n"
        "new = sorted(m for m in set(sys.modules) - before if not m.startswith('minima_nb'))\n"
        "print(' '.join(new))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('minima_nb'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    others, ours = (line.split() for line in out.stdout.splitlines())
    heavy = {"asyncio", "aiohttp", "httpx", "sqlite3", "ssl", "yaml", "adbc_driver_sqlite", "tqdm",
             "ipywidgets", "IPython", "dspy", "dask", "pyarrow.parquet"}
    assert sorted(m for m in others if m in heavy or m.split(".")[0] in heavy - {"pyarrow"}) == []
    # The engine's progress sinks are plain Python; its HTTP, cache and export parts wait for use.
    assert not [m for m in ours if m.startswith(
        ("minima_nb.engine.backend", "minima_nb.engine.transport", "minima_nb.export", "minima_nb.cache"))]
