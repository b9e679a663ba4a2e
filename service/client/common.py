"""What the client commands share: the API options, how errors are printed, plain tables.

Errors a client command reports (each prints as ``ftserve: error: <message> (<code>)``)::

    FtserveError
    ├── ApiError and its kind (service.api_client)   the API refused, or could not be asked
    ├── InputError (invalid_input)                   a file or value on the command line is
    │                                                unusable; nothing was sent
    └── the model server's errors (service.errors)   ``predict --grpc``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from service.errors import FtserveError

if TYPE_CHECKING:
    from service.api_client import ApiClient

ERROR_EXIT = 2  # the API (or the model server) refused or could not be asked


class InputError(FtserveError):
    """A file or value named on the command line cannot be used; nothing was sent."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_input"


def api_options(timeout_help: str) -> argparse.ArgumentParser:
    """A parent parser with ``--api-url``, ``--timeout`` and ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    add_api_options(common, timeout_help)
    return common


def add_api_options(
    parser: argparse.ArgumentParser,
    timeout_help: str,
    json_help: str = "print the API's JSON document",
) -> None:
    """``--api-url``, ``--timeout`` and ``--json`` on ``parser``."""
    parser.add_argument(
        "--api-url",
        help="the ftserve API (default: FTSERVE_API_URL, else http://127.0.0.1:8000);"
        " its token, if it needs one, is read from FTSERVE_API_TOKEN",
    )
    parser.add_argument("--timeout", type=seconds, help=timeout_help)
    parser.add_argument("--json", action="store_true", help=json_help)


def seconds(value: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    # A socket reads 0 as "do not block" and refuses negative, infinite or NaN timeouts.
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return number


def api_client(args: argparse.Namespace) -> ApiClient:
    """The API client the command line asks for (``--api-url``, ``--timeout``)."""
    from service.api_client import client_from_env

    return client_from_env(args.api_url, args.timeout)


def run_reporting_errors(action: Callable[[], int], as_json: bool) -> int:
    """``action()``'s exit status, or an error printed as one line and ``ERROR_EXIT``.

    With ``--json`` the error is the API's own document on stdout; otherwise one line on
    stderr that ends in the error's code, so a script can tell errors apart either way.
    """
    try:
        return action()
    except FtserveError as exc:
        report_error(exc, as_json)
        return ERROR_EXIT


def report_error(exc: FtserveError, as_json: bool) -> None:
    """Print ``exc`` as the API would answer it (``--json``) or as one line on stderr."""
    if as_json:
        print(json.dumps(exc.to_dict()))
    else:
        print(f"ftserve: error: {exc.message} ({exc.code})", file=sys.stderr)


def usage_error(message: str) -> int:
    """A command line that makes no sense, refused before any request."""
    print(f"ftserve: error: {message}", file=sys.stderr)
    return ERROR_EXIT


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on their widest cell, two spaces apart (as ``kubectl get`` prints)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = (
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    )
    return "\n".join(line.rstrip() for line in lines)


def number(value: object, digits: int = 4) -> str:
    """A metric as a person reads it: floats to ``digits`` places, ``-`` when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and not 10**-digits <= abs(value) < 10**6:
        return f"{value:.{digits - 1}e}"  # a learning rate of 1e-5 must not print as 0.0000
    return f"{value:.{digits}f}"
