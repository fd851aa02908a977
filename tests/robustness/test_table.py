"""docs/robustness.md and tests/robustness/ agree: every test the table names exists (with its
parameter), and every test here is named in the table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE.parents[1] / "docs" / "robustness.md"
NAMED = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[([^\]`]+)\])?`")


def _ids(function) -> list[str] | None:
    """The parameter ids pytest gives ``function`` (one parametrize mark), None if none."""
    marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
    if not marks:
        return None
    assert len(marks) == 1, f"{function.__name__}: one parametrize mark expected"
    mark = marks[0]
    values = mark.args[1]
    ids = mark.kwargs.get("ids")
    if callable(ids):
        return [str(ids(v)) for v in values]
    if ids is not None:
        return list(ids)
    return [str(v) for v in values]


def _tests_here() -> set[str]:
    """"file::name[id]" of every test in this folder but this file's."""
    found = set()
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        spec = importlib.util.spec_from_file_location(f"_robustness_table_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, function in vars(module).items():
            if name.startswith("test_") and callable(function):
                ids = _ids(function)
                found |= ({f"{path.name}::{name}"} if ids is None else
                          {f"{path.name}::{name}[{i}]" for i in ids})
    return found


def _rows() -> list[str]:
    return [line for line in TABLE.read_text().splitlines() if line.startswith("|")]


def test_every_row_is_a_test_and_every_test_a_row():
    named = {f"{f}::{t}" + (f"[{i}]" if i else "") for row in _rows()
             for f, t, i in NAMED.findall(row)}
    tests = _tests_here()
    assert len(tests) > 40
    assert sorted(named - tests) == [], "the table names tests that do not exist"
    assert sorted(tests - named) == [], "tests missing from docs/robustness.md"


def test_every_row_names_a_test():
    rows = [r for r in _rows() if not set(r) <= set("|-: ") and not r.startswith("| Case")]
    assert rows
    assert [r for r in rows if not NAMED.search(r)] == []
