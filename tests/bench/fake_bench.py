"""A stand-in benchmark for the suite's plumbing tests: instant, and told how to behave."""

from __future__ import annotations

import os

from bench.report import Measured


def measure(quick: bool) -> Measured:
    """Report a canned ratio, or fail, as ``FAKE_BENCH`` says."""
    if os.environ.get("FAKE_BENCH") == "fail":
        raise RuntimeError("the fake benchmark was told to fail")
    print("fake bench output")
    return Measured(
        values={"p6_request_size_ratio": 42.0 if quick else 41.0}, details={"quick": quick}
    )
