"""Jobs as text: the list, one job's summary and history, and a trained model's evaluation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from service.client.common import number, table
from service.client.progress import duration, metric_names, phase_name

Job = dict[str, Any]


def page_url(api_url: str, job_id: str) -> str:
    """Where the web page shows the job."""
    return f"{api_url.rstrip('/')}/ui/#/jobs/{quote(job_id, safe='')}"


def jobs_table(jobs: list[Job], now: datetime | None = None) -> str:
    """``jobs list``: one row per job."""
    header = ["ID", "MODEL", "STATUS", "PROGRESS", "CREATED (UTC)", "DURATION"]
    rows = [
        [
            job["job_id"],
            job["model_name"],
            _status(job),
            progress_text(job.get("progress")) if job["status"] == "running" else "-",
            when(job.get("created_at")),
            elapsed(job, now),
        ]
        for job in jobs
    ]
    return table(header, rows)


def job_summary(job: Job, now: datetime | None = None) -> str:
    """``jobs show``: who, what, when, how far; the error of a failed job."""
    config = job.get("config") or {}
    lines = [
        f"job       {job['job_id']}",
        f"model     {job['model_name']}",
        f"status    {_status(job)} (attempt {job.get('attempts')} of {job.get('max_attempts')})",
        f"config    {config_text(config)}",
        f"created   {_utc(job.get('created_at'))}",
        f"started   {_utc(job.get('started_at'))}",
        f"finished  {_utc(job.get('finished_at'))}",
        f"duration  {elapsed(job, now)}",
    ]
    if job["status"] == "running" and job.get("progress"):
        lines.append(f"progress  {progress_text(job['progress'])}")
    if job.get("error"):
        lines.append(f"error     {job['error']['message']} ({job['error']['code']})")
    return "\n".join(lines)


def config_text(config: dict[str, Any]) -> str:
    """The choices that shape a run, in one line."""
    parts = [str(config.get("base_model", "?"))]
    if config.get("image_size"):
        parts.append(f"{config['image_size']} px")
    parts.append(f"weights {config.get('weights', '?')}")
    epochs = f"{config.get('epochs', '?')} epochs"
    if config.get("fine_tune_epochs") and (
        config.get("fine_tune_layers") or config.get("fine_tune_at") is not None
    ):
        epochs += f" + {config['fine_tune_epochs']} fine-tune"
    parts.append(epochs)
    return ", ".join(parts)


def progress_text(progress: dict[str, Any] | None) -> str:
    """``head 2/3 step 12/30`` (epoch 2 of 3), or ``-``."""
    if not progress:
        return "-"
    text = f"{phase_name(progress.get('phase'))} {progress.get('epoch')}/{progress.get('epochs')}"
    if progress.get("steps"):
        text += f" step {progress.get('step')}/{progress['steps']}"
    return text


def history_table(history: list[dict[str, Any]]) -> str:
    """One row per finished epoch; a column per metric any epoch has."""
    names: dict[str, None] = {}  # ordered set: the metrics in the order first seen
    for row in history:
        names.update(dict.fromkeys(metric_names(row)))
    rows = [
        [phase_name(row.get("phase")), str(row.get("epoch")), *(number(row.get(n)) for n in names)]
        for row in history
    ]
    return table(["PHASE", "EPOCH", *(name.upper() for name in names)], rows)


def evaluation_report(result: dict[str, Any]) -> str:
    """The published version, then its evaluation on the held-out split: accuracy, each
    class's precision, recall, F1 and support, and the confusion matrix."""
    evaluation = result.get("evaluation") or {}
    per_class: dict[str, dict[str, Any]] = evaluation.get("per_class") or {}
    classes = list(result.get("classes") or per_class)
    lines = [f"model {result.get('model')} version {result.get('version')}{_promotion(result)}"]
    lines.append(
        f"accuracy {number(evaluation.get('accuracy'))} on {evaluation.get('count', '?')}"
        f" validation images, macro F1 {number(evaluation.get('macro_f1'))}"
    )
    rows = [_class_row(name, per_class.get(name, {})) for name in classes]
    lines += ["", table(["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"], rows)]
    matrix = evaluation.get("confusion_matrix")
    if matrix and len(matrix) == len(classes):
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        cells = [[name, *map(str, counts)] for name, counts in zip(classes, matrix, strict=True)]
        lines.append(table(["TRUE \\ PREDICTED", *classes], cells))
    return "\n".join(lines)


def _class_row(name: str, scores: dict[str, Any]) -> list[str]:
    rates = (number(scores.get(key)) for key in ("precision", "recall", "f1"))
    return [name, *rates, str(scores.get("support", "-"))]


def _promotion(result: dict[str, Any]) -> str:
    promotion = result.get("promotion") or {}
    labels = " ".join(f"{k}={v}" for k, v in sorted((result.get("labels") or {}).items()))
    text = f", {promotion['decision']}: {promotion.get('reason')}" if promotion else ""
    return text + (f" (labels {labels})" if labels else "")


def _status(job: Job) -> str:
    running = job["status"] in ("queued", "running")
    return job["status"] + (", cancel requested" if running and job["cancel_requested"] else "")


def when(stamp: str | None) -> str:
    """An API timestamp as ``2024-05-01 10:00:00`` (UTC), or ``-``."""
    moment = _parse(stamp)
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _utc(stamp: str | None) -> str:
    text = when(stamp)
    return text if text == "-" else f"{text} UTC"


def elapsed(job: Job, now: datetime | None = None) -> str:
    """How long the job ran (or has been running); ``-`` before it started."""
    started = _parse(job.get("started_at"))
    if started is None:
        return "-"
    ended = _parse(job.get("finished_at")) or now or datetime.now(UTC)
    return duration((ended - started).total_seconds())


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    # The API's timestamps are UTC; one without an offset is read as UTC too.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
