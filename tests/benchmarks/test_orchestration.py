"""The orchestration benchmark's pieces that need no run: the rotation of its programs, and the
bare flow it compares `gdflow run` with (five empty tasks, torch imported)."""

from __future__ import annotations

import ast

from benchmarks.orchestration import BARE_FLOW, programs, rotated


def test_each_program_leads_one_round_in_turn() -> None:
    names = list(programs())
    rounds = [rotated(names, i) for i in range(len(names))]
    assert [r[0] for r in rounds] == names
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert rotated(names, len(names)) == names


def test_the_bare_flow_is_five_empty_tasks_that_import_torch() -> None:
    tree = ast.parse(BARE_FLOW.read_text())
    imports = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    decorated = {
        f.name: [d.id for d in f.decorator_list if isinstance(d, ast.Name)] for f in functions
    }
    tasks = [name for name, marks in decorated.items() if marks == ["task"]]
    assert "torch" in imports and len(tasks) == 5
    assert all(
        isinstance(f.body[0], ast.Expr) and len(f.body) == 1  # a docstring, nothing else
        for f in functions
        if f.name in tasks
    )
    assert [name for name, marks in decorated.items() if marks == ["flow"]] == ["bare_flow"]
