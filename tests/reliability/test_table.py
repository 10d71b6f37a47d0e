"""The README's Reliability section is what make_table.py renders from the tests today."""

from __future__ import annotations

from . import make_table


def test_readme_reliability_table_is_up_to_date():
    """The block between the README's reliability markers equals the table rendered from the tests."""
    readme = make_table.README.read_text(encoding="utf-8")
    assert make_table.readme_block() in readme, (
        "run: .venv/bin/python tests/reliability/make_table.py --write-readme")
