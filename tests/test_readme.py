"""The README stays true: its configuration table matches the code's defaults and variables."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from minima_nb.config import ENV_VARS, MinimaLlmConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _table_rows() -> list[list[str]]:
    block = README.split("<!-- config-table", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in block.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row] for row in rows]


def _default(setting: str):
    obj: object = MinimaLlmConfig
    *groups, name = setting.split(".")
    for group in groups:
        obj = next(f for f in dataclasses.fields(obj) if f.name == group).default_factory
    field = next(f for f in dataclasses.fields(obj) if f.name == name)
    return field.default


def test_config_table_lists_every_environment_variable():
    """Every environment variable the code reads is in the table, against the right setting."""
    documented = {(row[0], row[1]) for row in _table_rows()}
    assert documented == {(setting, var) for var, setting, _ in ENV_VARS}


def test_config_table_defaults_equal_code_defaults():
    """Each documented default is the dataclass default."""
    for setting, _var, default, _meaning in _table_rows():
        code = _default(setting)
        if default == "(required)":
            assert code is dataclasses.MISSING, setting
        else:
            assert default == str(code), f"{setting}: README says {default}, code says {code}"


def test_readme_opens_with_the_two_commands():
    """The first code block is exactly `make demo` and `make test`."""
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == ["make demo", "make test"]
