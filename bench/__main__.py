"""Run every benchmark and print one table of the ratios (or the JSON object, or markdown).

    python -m bench                       every benchmark, then the table
    python -m bench --quick               a smaller run (minutes, not tens of minutes)
    python -m bench --only p3,p4          a subset: measure keys, prefixes or bench names
    python -m bench --json [--save FILE]  ONE JSON object on stdout; all else on stderr
    python -m bench --markdown [--from FILE]
    python -m bench --update-readme README.md [--from FILE]

``--from FILE`` renders a saved run instead of running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import report, suite

# A benchmark that hangs must not hang the suite: generous ceilings per benchmark.
_TIMEOUT_S = {True: 1800.0, False: 3600.0}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="fewer images, epochs, requests")
    parser.add_argument("--only", help="comma-separated keys (p3), prefixes or bench names")
    parser.add_argument("--markdown", action="store_true", help="print the README's table")
    parser.add_argument("--update-readme", type=Path, metavar="FILE", help="fill its bench markers")
    parser.add_argument("--from", dest="source", type=Path, metavar="FILE", help="a saved run")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also write the JSON here")
    return parser.parse_args(argv)


def _run_suite(args: argparse.Namespace) -> dict[str, Any]:
    benches = suite.select(args.only, args.quick)
    # With --json (or --markdown) stdout carries that alone: the benchmarks print to stderr.
    output = sys.stderr if args.json or args.markdown else sys.stdout
    started, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    found = {}
    for bench in benches:
        print(f"== {bench.name} ({bench.module}), load average {load_now()}", file=output)
        output.flush()
        found[bench.name] = suite.run(bench, args.quick, output, _TIMEOUT_S[args.quick])
    not_run = f"not run: --only {args.only}" if args.only else "no benchmark reported it"
    return report.assemble(found, report.run_info(args.quick, started, load), not_run)


def load_now() -> str:
    """The 1-, 5- and 15-minute load averages, as one short string."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run (or load) a benchmark result and print it the way the flags ask."""
    args = _arguments(argv)
    try:
        result = report.load(args.source) if args.source else _run_suite(args)
    except (ValueError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    if args.update_readme:
        path = args.update_readme
        try:
            updated = report.replace_between_markers(path.read_text(), report.markdown(result))
        except (report.MarkersMissing, OSError) as exc:
            print(f"bench: cannot update {path}: {exc}", file=sys.stderr)
            return 2
        path.write_text(updated)
    if args.json:
        print(json.dumps(result))
    elif args.markdown:
        print(report.markdown(result), end="")
    elif not args.update_readme:
        print("\n" + report.text_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
