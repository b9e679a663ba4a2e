"""``ftserve jobs``: submit a dataset to fine-tune on, watch a job, list, show and cancel jobs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.api_client import ApiClient
from service.client.common import (
    api_client,
    api_options,
    positive_int,
    run_reporting_errors,
)
from service.client.follow import FINAL_STATES, JobWatch, Update, follow_job
from service.client.progress import LineDisplay, display_for
from service.client.report import (
    evaluation_report,
    history_table,
    job_summary,
    jobs_table,
    page_url,
)
from service.client.upload import (
    ARCHIVE_SUFFIXES,
    check_dataset,
    dataset_archive,
    read_config,
)

JOB_FAILED_EXIT = 1  # the job failed or was cancelled
INTERRUPTED_EXIT = 130
STATES = ("queued", "running", "succeeded", "failed", "cancelled")

_EXIT_STATUS = """\
exit status: 0 done (for watch and submit --wait: the job succeeded); 1 the job failed or
was cancelled; 2 a bad command line, or the API refused or could not be reached."""
_SUBMIT_EXAMPLES = """\
examples:
  ftserve jobs submit ./flowers --model-name flowers --wait
  ftserve jobs submit flowers.tar.gz --config train.json
  ftserve jobs submit ./digits --config '{"model_name": "digits", "base_model": "small_cnn",
      "weights": "none", "image_size": 32, "epochs": 3}'

DATA holds one folder per class, each with that class's images (JPEG, PNG, GIF, BMP or
WebP). A folder is zipped first (hidden files left out); an archive is sent as it is.
The config's fields are those of POST /finetune (see the API's /docs): base_model,
weights, image_size, epochs, batch_size, learning_rate, fine_tune_layers, ..."""


_WATCH = "follow a job until it ends, then show its evaluation"
_WATCH_DETAILS = """\
On a terminal a progress bar shows the phase, epoch, step, time left and the latest loss
and accuracy; elsewhere (a log, a pipe) one line per state change and per finished epoch.
A dropped connection is reopened. At the end: accuracy, per-class precision, recall, F1
and support, the confusion matrix, and the job's web page. --json prints the final job."""
_CANCEL_DETAILS = """\
A queued job is cancelled at once; a running one is asked to stop, and its worker stops
it within a batch (its status stays running, cancel requested, until then)."""


def add_jobs(jobs: argparse.ArgumentParser) -> None:
    """The ``jobs`` actions, each with ``--api-url``, ``--timeout`` and ``--json``."""
    common = api_options("seconds to wait for each answer from the API (default: 330)")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_submit(actions, common)
    watch = _action(actions, "watch", common, _WATCH, _WATCH_DETAILS)
    watch.add_argument("job_id", metavar="ID", help="the job's id (from submit or list)")
    listing = _action(actions, "list", common, "jobs, newest first, one line each")
    listing.add_argument("--status", choices=STATES, help="only jobs in this state")
    listing.add_argument(
        "--limit", type=positive_int, default=20, help="at most this many (default 20)"
    )
    listing.add_argument(
        "--offset", type=_count, default=0, help="skip this many of the newest first"
    )
    show = _action(actions, "show", common, "a job's summary, history and evaluation")
    show.add_argument("job_id", metavar="ID")
    cancel = _action(
        actions, "cancel", common, "cancel a queued job, or stop a running one", _CANCEL_DETAILS
    )
    cancel.add_argument("job_id", metavar="ID")
    jobs.set_defaults(handler=run_jobs)


def _add_submit(actions: Any, common: argparse.ArgumentParser) -> None:
    submit = _action(actions, "submit", common, "upload a dataset and queue a fine-tuning job")
    submit.epilog = f"{_SUBMIT_EXAMPLES}\n\n{_EXIT_STATUS}"
    submit.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help=f"a folder of class folders, or an archive of them ({', '.join(ARCHIVE_SUFFIXES)})",
    )
    submit.add_argument(
        "--config",
        metavar="FILE|JSON",
        help="training options: a JSON file, or a JSON object given inline",
    )
    submit.add_argument(
        "--model-name", metavar="NAME", help="the model to train; wins over the config's"
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="then watch the job as `jobs watch` does; with --json, print only the final job",
    )


def _action(
    actions: Any, name: str, common: argparse.ArgumentParser, summary: str, details: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        parents=[common],
        help=summary,
        description="\n\n".join(filter(None, [f"{summary[0].upper()}{summary[1:]}.", details])),
        epilog=_EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of 0 or more: {value!r}")
    return int(value)


def run_jobs(args: argparse.Namespace) -> int:
    """Run one ``jobs`` action; its exit status."""
    return run_reporting_errors(lambda: _ACTIONS[args.action](api_client(args), args), args.json)


def submit(client: ApiClient, args: argparse.Namespace) -> int:
    """Upload the dataset with its config; then, with ``--wait``, watch the job."""
    config = read_config(args.config, args.model_name)
    check_dataset(args.data)
    # A wrong address or token shows now, not after zipping a large folder.
    client.list_jobs(limit=1)
    with dataset_archive(args.data) as archive:
        accepted = client.submit_job(archive, config)
    job_id = accepted["job_id"]
    if not args.json:
        print(f"job {job_id} queued: model {accepted['model_name']}")
        print(f"page: {page_url(client.base_url, job_id)}", flush=True)
    if args.wait:
        return watch(client, job_id, args.json)
    print(json.dumps(accepted) if args.json else f"watch it: ftserve jobs watch {job_id}")
    return 0


def watch(client: ApiClient, job_id: str, as_json: bool) -> int:
    """Follow ``job_id`` until it ends; print its evaluation (or the final job, ``--json``).

    Returns 0 when it succeeded, ``JOB_FAILED_EXIT`` when it failed or was cancelled.
    """
    job = client.get_job(job_id)
    display = None if as_json else display_for(sys.stdout, planned_epochs(job["config"]))
    known = JobWatch()
    try:
        if job["status"] not in FINAL_STATES:
            for update in follow_job(client, job_id, known):
                _show(display, update)
            job = client.get_job(job_id)
        # A finished job's history, or epochs that landed after the stream's last event.
        for update in known.apply("state", job):
            _show(display, update)
    except KeyboardInterrupt:
        _stopped_watching(display, job_id)
        return INTERRUPTED_EXIT
    finally:
        if display is not None:
            display.close()
    return _outcome(client, job, as_json)


def _show(display: LineDisplay | None, update: Update) -> None:
    if display is not None:
        display.show(update)


def _stopped_watching(display: LineDisplay | None, job_id: str) -> None:
    if display is not None:
        display.close()  # before the message, so that it does not land on the bar
    print(
        f"ftserve: stopped watching; job {job_id} goes on (ftserve jobs watch {job_id},"
        f" or ftserve jobs cancel {job_id})",
        file=sys.stderr,
    )


def _outcome(client: ApiClient, job: dict[str, Any], as_json: bool) -> int:
    """Print how the job ended; its exit status."""
    succeeded = job["status"] == "succeeded"
    if as_json:
        print(json.dumps(job))
    else:
        if succeeded and job.get("result"):
            print(f"\n{evaluation_report(job['result'])}\n")
        print(f"page: {page_url(client.base_url, job['job_id'])}")
    if succeeded:
        return 0
    if not as_json:
        error = job.get("error")
        why = f": {error['message']} ({error['code']})" if error else ""
        print(f"ftserve: error: job {job['job_id']} {job['status']}{why}", file=sys.stderr)
    return JOB_FAILED_EXIT


def planned_epochs(config: dict[str, Any]) -> dict[str, int]:
    """How many epochs each training phase may run, from the job's config."""
    planned = {"head": config.get("epochs"), "fine_tune": config.get("fine_tune_epochs")}
    return {phase: n for phase, n in planned.items() if isinstance(n, int) and n > 0}


def _list(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.list_jobs(args.status, args.limit, args.offset)
    if args.json:
        print(json.dumps(page))
        return 0
    items, total = page["items"], page["total"]
    print(jobs_table(items) if items else "no jobs")
    shown = args.offset + len(items)
    if shown < total:
        print(f"{len(items)} of {total} jobs; more with --offset {shown}")
    return 0


def _show_job(client: ApiClient, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    if args.json:
        print(json.dumps(job))
        return 0
    parts = [job_summary(job)]
    if job.get("history"):
        parts.append(history_table(job["history"]))
    if job.get("result"):
        parts.append(evaluation_report(job["result"]))
    parts.append(f"page: {page_url(client.base_url, job['job_id'])}")
    print("\n\n".join(parts))
    return 0


def _cancel(client: ApiClient, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job_id)
    if args.json:
        print(json.dumps(job))
    elif job["status"] == "cancelled":
        print(f"job {job['job_id']}: cancelled")
    else:
        print(f"job {job['job_id']}: cancel requested; its worker stops after the current batch")
    return 0


_ACTIONS: dict[str, Callable[[ApiClient, argparse.Namespace], int]] = {
    "submit": submit,
    "watch": lambda client, args: watch(client, args.job_id, args.json),
    "list": _list,
    "show": _show_job,
    "cancel": _cancel,
}
