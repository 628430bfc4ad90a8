"""The benchmarks run on the plain install (`pip install -e .`), without the test extra."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Distributions the test extra brings and the plain install does not, by their import names.
TEST_ONLY = ("pytest", "_pytest", "pluggy", "iniconfig", "pytest_timeout", "hypothesis", "schemathesis",
             "jsonschema", "cryptography", "kubernetes_validate", "httpx2", "ruff")

# Loaded first by the child interpreter: every meta-path finder answers "absent" for those names, as on a plain
# install (importlib.util.find_spec gives None; import raises ModuleNotFoundError).
SITECUSTOMIZE = f'''
import sys

HIDDEN = {set(TEST_ONLY)!r}


class Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
'''


def _plain_install_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    env["PYTHONPATH"] = str(tmp_path)
    return env


def test_the_dataset_bench_runs_without_the_test_extra(tmp_path):
    env = _plain_install_env(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", f"import {TEST_ONLY[0]}"], env=env, capture_output=True, text=True)
    assert hidden.returncode != 0 and "ModuleNotFoundError" in hidden.stderr  # the stand-in for a plain install holds

    run = subprocess.run([sys.executable, "-m", "bench", "datasets", "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("dataset_load_cold_vs_bare_get", "dataset_load_cold_mb_s", "dataset_load_cached_mb_s"):
        assert figures[name] > 0, figures
