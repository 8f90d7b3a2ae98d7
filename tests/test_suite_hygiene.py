"""The test suite's own rules (issue 22, item 7): builders are shared through tests/helpers.py, never by
importing another test module (conftest.py included) or editing ``sys.path``; and the CLI starts without
the report stack, which every subprocess test would otherwise pay for at each start."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


def _touches_sys_path(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"
               for node in ast.walk(tree))


def test_test_modules_share_code_only_through_helpers():
    sources = sorted(TESTS.rglob("*.py"))
    test_modules = {path.stem for path in sources if path.stem.startswith("test_")} | {"conftest"}
    problems = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = _imported_modules(tree) & test_modules
        if imported:
            problems.append(f"{path.relative_to(REPO_ROOT)} imports {sorted(imported)}")
        if _touches_sys_path(tree):
            problems.append(f"{path.relative_to(REPO_ROOT)} uses sys.path")
    assert not problems, "share builders through tests/helpers.py instead:\n" + "\n".join(problems)


def test_the_checks_above_see_what_they_look_for():
    # The negative control: the scan flags both patterns in source that has them.
    tree = ast.parse("import sys\nsys.path.insert(0, 'x')\nfrom conftest import REPO_ROOT\nimport test_train\n")
    assert {"conftest", "test_train"} <= _imported_modules(tree) and _touches_sys_path(tree)


@pytest.mark.slow  # a child process imports torch (~2 s of CPU)
def test_cli_start_does_not_import_the_report_stack():
    # Building the parser imports every command module; a top-level import of the audit, report or plot
    # modules there cost each `resnetlab` process ~2 s of CPU before it did anything (about 40% of a start).
    code = ("import sys\nfrom resnetlab.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
