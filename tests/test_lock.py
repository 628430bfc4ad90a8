"""requirements.lock pins exactly what pyproject.toml asks for, base and every extra, and nothing stale."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
VIA = re.compile(r"^\s+#\s+(?:via\s+)?(\S.*)$")


def _requirements(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = project.get("dependencies", []) + [r for extra in project.get("optional-dependencies", {}).values()
                                               for r in extra]
    reqs = [Requirement(line) for line in lines]
    # A requirement only for another platform or Python is not this lock's business.
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def _pins(lock: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Pinned versions and, per pin, the parents its "# via" annotation names."""
    pins: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if pin := PIN.match(line):
            current = canonicalize_name(pin[1])
            pins[current], parents[current] = pin[2], set()
        elif current and (via := VIA.match(line)) and via[1].strip() != "via":
            parents[current].add(via[1].strip())
        elif not line.startswith(" "):
            current = None
    return pins, parents


def lock_problems(pyproject: Path, lock: Path) -> list[str]:
    """What disagrees between pyproject.toml's requirements and the lock; empty when they agree."""
    requirements = _requirements(pyproject)
    pins, parents = _pins(lock)
    problems = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is in pyproject.toml but not pinned in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is in pyproject.toml but the lock pins {name}=={pins[name]}")
    # Walk the "# via" edges down from pyproject's requirements; a pin not reached is left over.
    children: dict[str, set[str]] = {}
    for child, via in parents.items():
        for parent in via:
            children.setdefault(canonicalize_name(parent), set()).add(child)
    reached, todo = set(), [canonicalize_name(r.name) for r in requirements]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(children.get(name, ()))
    problems += [f"{name}=={pins[name]} is pinned but nothing in pyproject.toml needs it"
                 for name in sorted(set(pins) - reached)]
    return problems


def test_lock_agrees_with_pyproject():
    assert lock_problems(ROOT / "pyproject.toml", ROOT / "requirements.lock") == []


def test_lock_says_how_to_regenerate_it():
    header = (ROOT / "requirements.lock").read_text().split("\n\n")[0]
    assert "pip-compile --all-extras" in header and "--output-file=requirements.lock" in header


@pytest.mark.parametrize(("old", "new", "problem"), [
    ('"tqdm>=4.66",', '"tqdm>=4.66",\n  "rich-click>=1.8",', r"rich-click>=1\.8 is in pyproject.toml but not pinned"),
    ('"pytest>=8,<9.2"', '"pytest>=9.2,<10"', r"pytest<10,>=9\.2 is in pyproject.toml but the lock pins pytest==9\.1"),
    ('  "kubernetes-validate>=1.28",\n', "", r"kubernetes-validate==\S+ is pinned but nothing in pyproject.toml"),
    ('ray = ["ray[default]>=2.52,<3"]', "ray = []", r"ray==\S+ is pinned but nothing in pyproject.toml"),
])
def test_a_drifted_pyproject_is_caught(tmp_path, old, new, problem):
    text = (ROOT / "pyproject.toml").read_text()
    assert old in text
    (tmp_path / "pyproject.toml").write_text(text.replace(old, new))
    problems = lock_problems(tmp_path / "pyproject.toml", ROOT / "requirements.lock")
    assert any(re.match(problem, p) for p in problems), problems


def test_a_stale_pin_is_caught(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text((ROOT / "requirements.lock").read_text() + "left-pad==1.0\n    # via nobody-now\n")
    assert lock_problems(ROOT / "pyproject.toml", lock) == [
        "left-pad==1.0 is pinned but nothing in pyproject.toml needs it"]
