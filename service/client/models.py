"""``ftserve models``: list, show, label, roll back and delete models through the API."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from service.api_client import ApiClient, Document
from service.client.common import api_client, api_options, run_reporting_errors, table, usage_error


def add_models(models: argparse.ArgumentParser) -> None:
    """The ``models`` actions, each with ``--api-url``, ``--timeout`` and ``--json``."""
    # The options go on every action, so they read naturally after it: `models list --json`.
    common = api_options(
        "seconds to wait for an answer (default: 330, longer than a label move may take)"
    )
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="models, their versions and labels")
    show = actions.add_parser("show", parents=[common], help="a model's versions in detail")
    show.add_argument("name")
    label = actions.add_parser(
        "label", parents=[common], help="point a label at a version, or delete it"
    )
    label.add_argument("name")
    label.add_argument("label", help="stable, canary or your own")
    move_or_delete = label.add_mutually_exclusive_group(required=True)
    move_or_delete.add_argument("version", type=int, nargs="?", help="the version to point at")
    move_or_delete.add_argument("--delete", action="store_true", help="delete the label")
    label.add_argument("--force", action="store_true", help="with --delete: even stable")
    rollback = actions.add_parser(
        "rollback", parents=[common], help="point stable back at its previous version"
    )
    rollback.add_argument("name")
    delete = actions.add_parser(
        "delete", parents=[common], help="delete one version, or the whole model"
    )
    delete.add_argument("name")
    delete.add_argument("--version", type=int, help="only this version (no label may point at it)")
    delete.add_argument("--force", action="store_true", help="the whole model, even labelled")
    models.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    """Run one ``models`` action; 0, or 2 with the error printed."""
    misuse = _force_misuse(args)
    if misuse:
        return usage_error(misuse)

    def action() -> int:
        document = _MODEL_ACTIONS[args.action](api_client(args), args)
        print(json.dumps(document) if args.json else _MODEL_VIEWS[args.action](document, args))
        return 0

    return run_reporting_errors(action, args.json)


def _force_misuse(args: argparse.Namespace) -> str | None:
    """Why ``--force`` makes no sense here, if it does not: refuse rather than ignore it."""
    if args.action == "label" and args.force and not args.delete:
        return "--force goes with --delete"
    if args.action == "delete" and args.force and args.version is not None:
        return "--force deletes the whole model; it does not go with --version"
    return None


def _label(client: ApiClient, args: argparse.Namespace) -> Document:
    if args.delete:
        return client.delete_label(args.name, args.label, args.force)
    return client.set_label(args.name, args.label, args.version)


def _delete(client: ApiClient, args: argparse.Namespace) -> Document:
    if args.version is not None:
        return client.delete_version(args.name, args.version)
    return client.delete_model(args.name, args.force)


_MODEL_ACTIONS: dict[str, Callable[[ApiClient, argparse.Namespace], Document]] = {
    "list": lambda client, args: client.list_models(),
    "show": lambda client, args: client.get_model(args.name),
    "label": _label,
    "rollback": lambda client, args: client.roll_back(args.name),
    "delete": _delete,
}


def _labels(labels: dict[str, int]) -> str:
    return " ".join(f"{label}={version}" for label, version in sorted(labels.items())) or "-"


def _list_view(document: Document, args: argparse.Namespace) -> str:
    rows = [
        [m["name"], ",".join(map(str, m["versions"])) or "-", _labels(m["labels"])]
        for m in document["models"]
    ]
    return table(["NAME", "VERSIONS", "LABELS"], rows)


def _labels_view(document: Document, args: argparse.Namespace) -> str:
    return f"{document['name']} labels: {_labels(document['labels'])}"


def _show_view(document: Document, args: argparse.Namespace) -> str:
    header = ["VERSION", "SERVED", "STATE", "LABELS", "ACCURACY", "MACRO F1", "CREATED"]
    rows = [_version_row(v) for v in document["versions"]]
    return "\n".join(
        [
            _labels_view(document, args),
            table([*header, "PROMOTION"], rows),
            *_version_errors(document["versions"]),
        ]
    )


def _version_row(version: dict[str, Any]) -> list[str]:
    metrics, promotion = version["metrics"], version["promotion"] or {}
    return [
        str(version["version"]),
        "yes" if version["served"] else "no",
        version["state"],
        ",".join(version["labels"]) or "-",
        _metric(metrics.get("accuracy")),
        _metric(metrics.get("macro_f1")),
        version["created_at"] or "-",
        promotion.get("decision") or "-",
    ]


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _version_errors(versions: list[dict[str, Any]]) -> list[str]:
    """The model server's errors under the table, once each: when it cannot be asked at
    all, every version carries the same one."""
    by_error: dict[str, list[str]] = {}
    for version in versions:
        if version["error"]:
            by_error.setdefault(version["error"], []).append(str(version["version"]))
    return [f"{_versions(numbers)}: {error}" for error, numbers in by_error.items()]


def _versions(numbers: Sequence[object]) -> str:
    """``version 2`` or ``versions 1, 2``."""
    return f"version{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def _deleted_view(document: Document, args: argparse.Namespace) -> str:
    whole = "" if args.version is not None else " (the whole model)"
    return f"{document['name']}: deleted {_versions(document['deleted_versions'])}{whole}"


_MODEL_VIEWS: dict[str, Callable[[Document, argparse.Namespace], str]] = {
    "list": _list_view,
    "show": _show_view,
    "label": _labels_view,
    "rollback": _labels_view,
    "delete": _deleted_view,
}
