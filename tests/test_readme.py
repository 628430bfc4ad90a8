"""The README's first two commands are the ones that set up, run and test the project."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\$ (.+)$", text, flags=re.M)


def test_first_two_commands_run_the_service_and_the_tests():
    run, test = _commands()[:2]
    assert run.endswith("scv serve") and "pip install -c requirements.lock -e . " in run
    assert test.endswith("pytest") and "pip install -c requirements.lock -e '.[test,ray]' " in test


def test_ci_runs_the_readme_test_command():
    assert _commands()[1] in (ROOT / ".ci" / "run").read_text().splitlines()
