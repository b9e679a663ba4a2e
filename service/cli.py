"""The ``ftserve`` command line: one entry point, one subcommand per process or task."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import FtserveError

if TYPE_CHECKING:
    from service.api_client import ApiClient, Document


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FtserveError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict()))
        else:
            print(f"ftserve: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands.add_parser("train", help="fine-tune a model on a local dataset"))
    _add_model_server(
        commands.add_parser(
            "model-server",
            help="serve a model repository over gRPC and REST like TensorFlow Serving",
        )
    )
    serve = commands.add_parser(
        "serve", help="run the model server, a worker and the API on this machine"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address the API listens on")
    serve.add_argument("--port", type=int, default=8000, help="API port")
    serve.add_argument("--grpc-port", type=int, default=8500, help="model server gRPC port")
    serve.add_argument("--rest-port", type=int, default=8501, help="model server REST port")
    serve.set_defaults(handler=_serve)
    api = commands.add_parser("api", help="run the HTTP API (FastAPI on uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(handler=_api)
    worker = commands.add_parser("worker", help="claim queued jobs and train them")
    worker.add_argument("--worker-id", help="this worker's name in the job store")
    worker.add_argument("--once", action="store_true", help="run one job (or none), then exit")
    worker.add_argument("--poll-seconds", type=float, default=1.0)
    worker.set_defaults(handler=_worker)
    sample = commands.add_parser("sample-data", help="write a small synthetic shapes dataset")
    sample.add_argument("output", type=Path)
    sample.add_argument("--images-per-class", type=int, default=30)
    sample.add_argument("--image-size", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--overwrite", action="store_true")
    sample.set_defaults(handler=_sample_data)
    _add_models(
        commands.add_parser(
            "models", help="list, show, label, roll back and delete models through the API"
        )
    )
    return parser


def _add_train(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", type=Path, required=True, help="dataset folder or archive")
    train.add_argument("--model-name", required=True)
    train.add_argument("--config", type=Path, help="JSON file of training options")
    # Flags mirror TrainConfig fields; given flags override the config file.
    train.add_argument("--base-model")
    train.add_argument("--weights", help="imagenet | none | a file in the weights folder")
    for flag in ("image-size", "epochs", "fine-tune-layers", "fine-tune-epochs", "batch-size"):
        train.add_argument(f"--{flag}", type=int)
    for flag in ("learning-rate", "fine-tune-learning-rate"):
        train.add_argument(f"--{flag}", type=float)
    train.add_argument("--fine-tune-at", type=_layer_ref, help="first layer to unfreeze")
    train.add_argument("--output", type=Path, help="job folder (default: a new one under work_dir)")
    train.add_argument(
        "--model-repo", type=Path, help="model repository to publish into (FTSERVE_MODEL_REPO)"
    )
    train.add_argument("--json", action="store_true", help="print one JSON document")
    train.set_defaults(handler=_train)


def _add_model_server(parser: argparse.ArgumentParser) -> None:
    from service.model_server.options import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=_model_server)


def _model_server(args: argparse.Namespace) -> int:
    from service.model_server.options import options_from_args

    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"ftserve model-server: error: {exc}", file=sys.stderr)
        return 2
    from service.model_server.server import run

    return run(options)


def _serve(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.stack import Ports, serve

    return serve(get_settings(), args.host, Ports(args.port, args.grpc_port, args.rest_port))


def _api(args: argparse.Namespace) -> int:
    from service.api.server import run
    from service.config import get_settings

    return run(get_settings(), args.host, args.port)


def _worker(args: argparse.Namespace) -> int:
    from service.finetune.worker import run_worker

    return run_worker(args.worker_id, args.once, args.poll_seconds)


def _layer_ref(value: str) -> int | str:
    """A layer index when it is a number, else a layer name."""
    return int(value) if value.isdigit() else value


def _train(args: argparse.Namespace) -> int:
    from service.finetune.command import run_train

    return run_train(args)


def _sample_data(args: argparse.Namespace) -> int:
    from service.training.sample_data import make_shapes_dataset

    try:
        root = make_shapes_dataset(
            args.output,
            args.images_per_class,
            args.image_size,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except FileExistsError as exc:
        print(f"ftserve: error: {exc} (use --overwrite)", file=sys.stderr)
        return 2
    print(root)
    return 0


# -- models, through the API -----------------------------------------------------------------


def _add_models(models: argparse.ArgumentParser) -> None:
    # The options go on every action, so they read naturally after it: `models list --json`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        help="the ftserve API (default: FTSERVE_API_URL, else http://127.0.0.1:8000);"
        " its token, if it needs one, is read from FTSERVE_API_TOKEN",
    )
    common.add_argument(
        "--timeout",
        type=_seconds,
        help="seconds to wait for an answer (default: 330, longer than a label move may take)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON document")
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
    models.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from service.api_client import ApiError, client_from_env

    misuse = _force_misuse(args)
    if misuse:
        print(f"ftserve: error: {misuse}", file=sys.stderr)
        return 2
    try:
        document = _MODEL_ACTIONS[args.action](client_from_env(args.api_url, args.timeout), args)
    except ApiError as exc:
        # Handled here rather than in main(): the API's error code belongs in the message.
        if args.json:
            print(json.dumps(exc.to_dict()))
        else:
            print(f"ftserve: error: {exc.message} ({exc.code})", file=sys.stderr)
        return 2
    print(json.dumps(document) if args.json else _MODEL_VIEWS[args.action](document, args))
    return 0


def _force_misuse(args: argparse.Namespace) -> str | None:
    """Why ``--force`` makes no sense here, if it does not: refuse rather than ignore it."""
    if args.action == "label" and args.force and not args.delete:
        return "--force goes with --delete"
    if args.action == "delete" and args.force and args.version is not None:
        return "--force deletes the whole model; it does not go with --version"
    return None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    # A socket reads 0 as "do not block" and refuses negative, infinite or NaN timeouts.
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {value!r}")
    return seconds


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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on their widest cell, two spaces apart (as ``kubectl get`` prints)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = (
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    )
    return "\n".join(line.rstrip() for line in lines)


def _labels(labels: dict[str, int]) -> str:
    return " ".join(f"{label}={version}" for label, version in sorted(labels.items())) or "-"


def _list_view(document: Document, args: argparse.Namespace) -> str:
    rows = [
        [m["name"], ",".join(map(str, m["versions"])) or "-", _labels(m["labels"])]
        for m in document["models"]
    ]
    return _table(["NAME", "VERSIONS", "LABELS"], rows)


def _labels_view(document: Document, args: argparse.Namespace) -> str:
    return f"{document['name']} labels: {_labels(document['labels'])}"


def _show_view(document: Document, args: argparse.Namespace) -> str:
    header = ["VERSION", "SERVED", "STATE", "LABELS", "ACCURACY", "MACRO F1", "CREATED"]
    rows = [_version_row(v) for v in document["versions"]]
    return "\n".join(
        [
            _labels_view(document, args),
            _table([*header, "PROMOTION"], rows),
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

if __name__ == "__main__":
    sys.exit(main())
