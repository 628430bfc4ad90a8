"""`python -m bench [--json] [NAMES...]`: run the benchmark modules and print their figures."""

import argparse
import importlib
import json
import sys
import time

from bench.context import bench_context

# Each module exposes `measure(ctx) -> dict[str, float]`; figures are ratios or sizes, never bare times
# compared across runs.
MODULES = ["datasets", "training", "checkpoints", "catalog", "registry", "analysis", "load", "sweeps"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"modules to run (default: all of {MODULES})")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures last")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    for name in args.names or MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"# {name}: not present, skipped", file=sys.stderr)
            continue
        start = time.perf_counter()
        with bench_context() as ctx:
            results = module.measure(ctx)
        figures.update(results)
        print(f"# {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
        for key, value in results.items():
            print(f"{key:<32} {value:>12.3f}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
