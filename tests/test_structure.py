"""The tests' own layout: shared helpers live in tests/support (importable without pytest), fixtures in conftest.py
and its plugins, and no test module, benchmark or service module imports another test module."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS, SUPPORT = ROOT / "tests", ROOT / "tests" / "support"
# Imports the modules named on its command line with pytest blocked, and prints those that failed, with why.
IMPORT_WITHOUT_PYTEST = """
import importlib, json, sys

sys.modules["pytest"] = sys.modules["_pytest"] = None  # `import pytest` now raises ImportError
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = repr(e)
print(json.dumps(failed))
"""


def imported(source: str, package: str) -> set[str]:
    """Every module `source` (a module of `package`) imports, at any depth (`from tests import x` counts as
    `tests.x`), and every plugin it registers through `pytest_plugins`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            anchor = package.rsplit(".", node.level - 1)[0] if node.level else ""  # `.` is `package`, `..` its parent
            base = ".".join(part for part in (anchor, node.module) if part)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytest_plugins" for t in node.targets):
            names |= {n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


def imports_of(path: Path) -> set[str]:
    return imported(path.read_text(), ".".join(path.relative_to(ROOT).parent.parts))


def from_tests(names: set[str]) -> set[str]:
    return {n for n in names if n == "tests" or n.startswith("tests.")}


def outside_support(names: set[str]) -> set[str]:
    return {n for n in from_tests(names) if n != "tests" and n.split(".")[:2] != ["tests", "support"]}


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_test_modules_fixtures_and_benchmarks_import_nothing_from_tests_but_its_support_package():
    wrong = {}
    for path in sources("tests", "bench"):
        names = outside_support(imports_of(path))
        if path == TESTS / "conftest.py":  # registers the fixture plugins
            names = {n for n in names if not n.startswith("tests.fixtures_")}
        if names:
            wrong[str(path.relative_to(ROOT))] = sorted(names)
    assert wrong == {}


def test_nothing_imports_conftest_and_the_service_imports_no_test_code():
    assert not [path for path in sources("app", "models", "tests", "bench")
                if {"conftest", "tests.conftest"} & imports_of(path)]
    assert not [path for path in sources("app", "models") if from_tests(imports_of(path))]


def test_the_check_sees_every_way_of_importing_a_test_module():
    sample = ("import tests.test_a\nfrom tests import test_b, support\nfrom . import test_c\nfrom .support import s3\n"
              "from .support.waiting import wait_for\ndef f():\n    from tests.test_d import x\n"
              "pytest_plugins = ['tests.fixtures_e']\n")
    assert outside_support(imported(sample, "tests")) == {
        "tests.test_a", "tests.test_b", "tests.test_c", "tests.test_d", "tests.test_d.x", "tests.fixtures_e"}
    assert "tests.conftest" in imported("from .. import conftest", "tests.support")


def test_conftest_and_its_plugins_hold_fixtures_only():
    for path in [TESTS / "conftest.py", *TESTS.glob("fixtures_*.py")]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                is_hook = node.name.startswith("pytest_")
                assert is_hook or any(d.startswith("pytest.fixture") for d in decorators), f"{path.name}: {node.name}"
            elif isinstance(node, ast.Assign):
                assert [ast.unparse(t) for t in node.targets] == ["pytest_plugins"], f"{path.name}: {ast.unparse(node)}"
            else:
                assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)), f"{path.name}: {ast.unparse(node)}"


def test_every_support_module_imports_without_pytest():
    modules = sorted(f"tests.support.{path.stem}" for path in SUPPORT.glob("*.py") if path.stem != "__init__")
    run = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_PYTEST, "tests.support", *modules], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tests.support.s3" in modules and json.loads(run.stdout.strip().splitlines()[-1]) == {}


def test_every_module_of_the_service_stays_within_300_lines():
    lines = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in sources("app", "models")}
    assert {name: count for name, count in lines.items() if count > 300} == {}
