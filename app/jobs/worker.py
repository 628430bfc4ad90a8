"""The training worker: one job, start to finish, in its own process (local child or Ray job)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from app.jobs.attempt import run
from app.jobs.queue import Claim
from app.memory import keep_freed_memory
from app.settings import LOG_FORMAT, Settings, load_settings
from app.storage import layout
from app.storage.embedded import die_with_parent


def run_in_child(claim: Claim, env: dict[str, str], concurrency: int) -> None:
    """Entry point of a local pool's child process; `env` is the pool's `Settings.to_env()`."""
    die_with_parent(signal.SIGKILL)
    keep_freed_memory()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the pool decides
    settings = Settings(_env_file=None, **env)
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    threads = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    sys.exit(run(claim, settings, threads=threads))


def main() -> None:
    """`python -m app.jobs.worker VERSION ATTEMPT`: the entry point of a Ray job (settings from the environment)."""
    parser = argparse.ArgumentParser(prog="python -m app.jobs.worker")
    parser.add_argument("version")
    parser.add_argument("attempt", type=int)
    args = parser.parse_args()
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    url = make_url(settings.catalog_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        sys.exit(f"the catalog {url.database} is not on this machine: a SQLite catalog serves only workers on the "
                 "API's machine; set SCV_DATABASE_URL to a PostgreSQL database every worker reaches")
    sys.exit(run(Claim(layout.validate_job_id(args.version), args.attempt), settings))


if __name__ == "__main__":
    main()
