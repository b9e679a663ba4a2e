"""Benchmarks: each prints ratios measured side by side in one run.

``python -m bench`` runs them all (each in a process of its own, see ``suite``) and ends
with one table of the ratios (``report``); ``--json`` prints them as one object.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def quick_main(doc: str | None, measure: Callable[[bool], object]) -> None:
    """The command line of a bench whose one option is ``--quick``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs")
    measure(parser.parse_args().quick)
