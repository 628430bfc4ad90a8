"""The code's layout: packages by domain, each saying what it owns, and no two file names a letter apart."""

import ast
from itertools import combinations
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
TOP = {"__init__.py", "main.py", "cli.py", "settings.py", "errors.py", "metrics.py"}


def one_edit_apart(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def test_no_two_module_names_differ_by_one_letter():
    names = {path.stem for path in APP.rglob("*.py") if path.stem != "__init__"}
    names |= {path.name for path in APP.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    close = [(a, b) for a, b in combinations(sorted(names), 2) if one_edit_apart(a, b)]
    assert close == []
    assert one_edit_apart("analysis", "analyses") and not one_edit_apart("jobs", "service")  # the check checks


def test_every_package_says_what_it_owns_and_few_modules_stay_at_the_top():
    packages = [path for path in APP.iterdir() if (path / "__init__.py").exists()]
    assert {p.name for p in packages} >= {"api", "storage", "datasets", "jobs", "registry", "analysis", "db"}
    for package in packages:
        assert ast.get_docstring(ast.parse((package / "__init__.py").read_text())), package.name
    loose = {path.name for path in APP.glob("*.py")} - TOP
    assert len(loose) <= 3, loose


def test_app_analysis_cka_is_the_cka_function():
    import torch

    from app.analysis import cka

    x = torch.randn(20, 5, dtype=torch.float64)
    assert abs(float(cka(x, x)) - 1.0) < 1e-12
