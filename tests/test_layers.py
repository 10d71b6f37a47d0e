"""Module layering: imports only point down the list of DESIGN.md section 2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minima_nb"

# Rank of each module: a module may import only modules of strictly lower rank.
# Departures from DESIGN.md's list, kept deliberately: looplocal/meter/wire/progress and the
# cache's cachekey/cachewriter are small leaf nouns, and batch.py (a generic pool that knows
# nothing of HTTP) sits below backend.py, whose run_batched builds on it. accessor.py keeps the
# pandas-facing methods and jobs.py the running of one call; arrowpages.py reads export pages;
# mockreplies.py holds what the mock server (testing.py) answers.
RANKS = {
    "_version": 0, "types": 0, "errors": 0, "looplocal": 0,
    "config": 1, "meter": 1, "cachekey": 1, "cachewriter": 1,
    "cachefile": 2, "cache": 3, "transport": 2, "ratelimit": 2, "retry": 2, "wire": 2, "progress": 2, "mockreplies": 2,
    "batch": 3, "testing": 3,
    "backend": 4,
    "runner": 5,
    "session": 6,
    "prompts": 6, "arrowpages": 6, "parquetschema": 6,
    "jobs": 7, "export": 7, "batch_api": 7, "dspy_adapter": 7, "proxy": 7, "dask": 7,
    "accessor": 8,
    "demo": 8, "cli": 8,
    "__init__": 9, "__main__": 9,
}
CORE = {"types", "errors", "looplocal", "config", "meter", "cache", "cachekey", "cachewriter",
        "transport", "ratelimit", "retry", "wire", "batch", "backend"}
HEAVY = {"pandas", "pyarrow", "ipywidgets", "tqdm", "dspy", "IPython", "numpy"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add("." + node.module.split(".")[0])
            elif node.level == 1:
                names.update("." + a.name for a in node.names)
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_has_a_rank():
    """A new module must be placed in the layer list."""
    assert sorted(set(MODULES) - set(RANKS)) == []


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    """Each module imports only lower-ranked package modules (lazy imports included)."""
    for name in _imports(PACKAGE / f"{module}.py"):
        target = name[1:] if name.startswith(".") else (
            name.split(".")[1] if name.startswith("minima_nb.") else None)
        if target is not None:
            assert RANKS[target] < RANKS[module], f"{module} imports {target}"


@pytest.mark.parametrize("module", sorted(CORE))
def test_core_avoids_heavy_libraries(module):
    """Core modules never import pandas, pyarrow, ipywidgets, tqdm or dspy."""
    heavy = {n.split(".")[0] for n in _imports(PACKAGE / f"{module}.py")} & HEAVY
    assert heavy == set()


@pytest.mark.parametrize("module", MODULES)
def test_module_has_docstring(module):
    """Every module says what it owns."""
    assert ast.get_docstring(ast.parse((PACKAGE / f"{module}.py").read_text()))


def test_public_api_is_sorted_and_importable():
    """__all__ is sorted and every name in it imports from the package."""
    import minima_nb

    assert minima_nb.__all__ == sorted(minima_nb.__all__)
    for name in minima_nb.__all__:
        assert hasattr(minima_nb, name), name
