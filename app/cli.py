"""The `scv` command line: the server, the embedded storage, seeding, and clients of a running service (the sweep
commands in `cli_sweeps.py`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import httpx
from pydantic import ValidationError

from app import cli_sweeps
from app.client import APIError, ChecksumMismatch, Client
from app.errors import ServiceError
from app.jobs.record import JobRecord
from app.jobs.request import TrainRequest
from app.settings import LOG_FORMAT, SettingsError, check_bind, load_settings


def _serve(args, settings) -> int:
    import uvicorn

    from app.main import create_app

    check_bind(settings, args.host)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _storage(args, settings) -> int:
    from app.storage import embedded

    with embedded.connect(settings) as (_, resolved):
        secret = resolved.minio_secret_key.get_secret_value()
        print(f"MINIO_ENDPOINT={resolved.minio_endpoint}\nMINIO_ACCESS_KEY={resolved.minio_access_key}\n"
              f"MINIO_SECRET_KEY={secret}\n# buckets: {resolved.minio_model_bucket}, "
              f"{resolved.minio_dataset_bucket}; Ctrl-C stops the server", flush=True)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
    return 0


def _worker(args, settings) -> int:
    from app.db.engine import Database
    from app.main import job_service
    from app.storage import embedded

    if settings.max_concurrent_jobs == 0:
        raise SettingsError("SCV_MAX_CONCURRENT_JOBS is 0: a worker with no slots would train nothing")
    with embedded.connect(settings) as (store, resolved):
        db = Database(resolved.catalog_url)
        db.migrate()
        jobs = job_service(resolved, store=store, db=db)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        jobs.start()
        logging.getLogger("scv").info("worker ready: %d slot(s) on %s", resolved.max_concurrent_jobs, db.shown)
        stop.wait()
        jobs.stop()  # running jobs go back to the queue now, for any worker to resume
        db.dispose()
    return 0


def _catalog_rebuild(args, settings) -> int:
    from app.db.engine import Database
    from app.registry.rebuild import rebuild_catalog
    from app.storage import embedded

    with embedded.connect(settings) as (store, resolved):
        db = Database(resolved.catalog_url)
        db.migrate()
        counts = rebuild_catalog(store=store, db=db, bucket=resolved.minio_model_bucket)
    print(" ".join(f"{name}={count}" for name, count in counts.items()))
    return 0


def _datasets_seed(args, settings) -> int:
    from app.datasets import ingest
    from app.storage import embedded

    with embedded.connect(settings) as (store, resolved):
        results = ingest.seed(store, resolved, names=args.names or None, from_dir=args.from_dir,
                              force=args.force, cka_per_class=args.cka_per_class, progress=True)
    for result in results:
        print(f"{result['name']:<14} {result['action']:<9} {result.get('bytes', 0):>12} bytes")
    return 0


def _datasets_ls(args, settings) -> int:
    from app.datasets.service import DatasetService
    from app.storage import embedded

    with embedded.connect(settings) as (store, resolved):
        items = DatasetService(store=store, settings=resolved).list()
    for item in items:
        sizes = f"train {item['train_size']:>6}  test {item['test_size']:>6}" if item["seeded"] else "not seeded"
        print(f"{item['name']:<14} {sizes}")
    return 0


# -- clients of a running service ------------------------------------------------------------------

def _client(settings) -> Client:
    """A client of the service at SCV_URL, with SCV_API_TOKEN (from the environment or `.env`)."""
    return Client(settings.service_url, settings.api_token.get_secret_value() if settings.api_token else None)


def _train(args, settings) -> int:
    fields = {"layers": json.loads(Path(args.layers).read_text())} if args.layers else {}
    request = TrainRequest(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                           **({"version": args.version} if args.version else {}), **fields)
    with _client(settings) as client:
        record = client.train(request)
        print(f"queued {record.version}", file=sys.stderr)
        if args.wait:
            record = _follow(client, record.version)
    print(record.model_dump_json(include={"version", "status", "metrics", "error"}, indent=2))
    return 0 if record.status in ("queued", "running", "succeeded") else 1


def _follow(client: Client, version: str) -> JobRecord:
    from tqdm import tqdm

    with tqdm(total=100, unit="%", desc=version, bar_format="{l_bar}{bar}| {postfix}") as bar:
        def show(record: JobRecord) -> None:
            p, m = record.progress, record.metrics or {}
            bar.n = round(100 * p.fraction, 1)
            bar.set_postfix_str(f"{record.status} epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps}"
                                f" loss {m.get('train_loss') or 0:.4f} acc {m.get('train_accuracy') or 0:.3f}")

        record = client.wait(version, on_update=show)
    print(f"{version}: {record.status}, test accuracy {(record.metrics or {}).get('test_accuracy')}", file=sys.stderr)
    return record


def _models_ls(args, settings) -> int:
    with _client(settings) as client:
        for item in client.models(dataset=args.dataset, limit=1000):
            accuracy = "-" if item.test_accuracy is None else f"{item.test_accuracy:.4f}"
            print(f"{item.version:<40} {item.dataset or '-':<14} acc {accuracy:<7} "
                  f"{item.size_bytes:>10} B  {item.created_at}")
    return 0


def _models_pull(args, settings) -> int:
    from tqdm import tqdm

    with _client(settings) as client, tqdm(unit="B", unit_scale=True, desc=args.version) as bar:
        def show(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        path, sha256, _ = client.download(args.version, args.output, on_progress=show)
    print(f"{path} sha256 {sha256}")
    return 0


def _models_rm(args, settings) -> int:
    with _client(settings) as client:
        client.delete(args.version)
    print(f"deleted {args.version}")
    return 0


def _sweeps(args, settings) -> int:
    """`scv sweep` and `scv sweeps ...` (app/cli_sweeps.py), on a client of the service."""
    with _client(settings) as client:
        return args.sweep_command(args, client)


def _logging(args, settings) -> str:
    """Configure logging once for every command and return the level (debug, info, warning or error).

    --verbose means debug; else SCV_LOG_LEVEL, whose default is info for the service and warning for the clients of
    one, so that their output is only what they report. Libraries' per-request (and alembic's set-up) lines need
    debug.
    """
    if args.verbose:
        level = "debug"
    elif (args.run in (_train, _models_ls, _models_pull, _models_rm, _sweeps)
          and "log_level" not in settings.model_fields_set):
        level = "warning"
    else:
        level = settings.log_level
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    for name in ("httpx", "httpcore", "urllib3", "minio", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    return level


def parser() -> argparse.ArgumentParser:
    """The argument parser of `scv`."""
    p = argparse.ArgumentParser(prog="scv", description="SCV Trainer")
    verbose = {"action": "store_true", "help": "log at debug level, libraries' request lines included"}
    p.add_argument("-v", "--verbose", **verbose)
    # the option after a subcommand too; SUPPRESS keeps a subcommand from resetting one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", default=argparse.SUPPRESS, **verbose)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common],
                           help="run the API (and the embedded S3 server when MINIO_ENDPOINT is unset)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)
    sub.add_parser("storage", parents=[common], help="run only the embedded S3 server").set_defaults(run=_storage)
    sub.add_parser("worker", parents=[common], help="run only the worker pool: claim queued jobs and train them"
                   ).set_defaults(run=_worker)
    catalog = sub.add_parser("catalog", help="maintain the catalog database").add_subparsers(dest="action",
                                                                                               required=True)
    catalog.add_parser("rebuild", parents=[common], help="re-create the model catalog from the model bucket "
                       "(metadata.json, and job.json of earlier releases)").set_defaults(run=_catalog_rebuild)

    datasets = sub.add_parser("datasets", help="seed and list datasets").add_subparsers(dest="action", required=True)
    seed = datasets.add_parser("seed", parents=[common], help="fetch, convert, verify and upload datasets")
    seed.add_argument("names", nargs="*", help="mnist fashion_mnist cifar10 svhn emnist (default: all)")
    seed.add_argument("--from-dir", type=Path, help="torchvision root with the raw files already there")
    seed.add_argument("--force", action="store_true", help="convert and upload even if unchanged")
    seed.add_argument("--cka-per-class", type=int, default=10, metavar="K")
    seed.set_defaults(run=_datasets_seed)
    datasets.add_parser("ls", parents=[common], help="list datasets").set_defaults(run=_datasets_ls)

    train = sub.add_parser("train", parents=[common], help="submit a training job to a running service")
    train.add_argument("dataset")
    for option, default in (("--epochs", 1), ("--batch-size", 64), ("--seed", 0)):
        train.add_argument(option, type=int, default=default)
    train.add_argument("--layers", help="JSON file with the layer list")
    train.add_argument("--version")
    train.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    train.set_defaults(run=_train)

    models = sub.add_parser("models", help="list, download, delete models").add_subparsers(dest="action",
                                                                                            required=True)
    for action, run, arguments in (("ls", _models_ls, [["--dataset"]]), ("rm", _models_rm, [["version"]]),
                                   ("pull", _models_pull, [["version"], ["-o", "--output"]])):
        command = models.add_parser(action, parents=[common])
        for names in arguments:
            command.add_argument(*names)
        command.set_defaults(run=run)
    cli_sweeps.add_parsers(sub, common, run=_sweeps)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scv` console script."""
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        args.log_level = _logging(args, settings)
        return args.run(args, settings)
    except SettingsError as exc:
        print(f"scv: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"scv: {exc.detail}", file=sys.stderr)
        return 1
    except APIError as exc:  # the service's answer, as one line: status, the field at fault, and what to do
        detail = exc.detail if not exc.field or exc.field in exc.detail else f"{exc.field}: {exc.detail}"
        print(f"scv: error {exc.status}: {detail}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # refused before it was sent, as the service would have refused it
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        print(f"scv: invalid request: {fields}", file=sys.stderr)
        return 2
    except ChecksumMismatch as exc:
        print(f"scv: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"scv: cannot reach the service at SCV_URL ({exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
