"""The ``ftserve`` command line: one entry point, one subcommand per process or task."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from service.errors import FtserveError


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the chosen command's arguments are built: the client commands' modules stay
    # unimported when `ftserve api` starts.
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = _parser(chosen)
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, where it is caught, not at exit
        return code
    except FtserveError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict()))
        else:
            print(f"ftserve: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ftserve jobs list | head`): stop quietly, as other tools do.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``chosen``, only that command's arguments are added."""
    parser = argparse.ArgumentParser(prog="ftserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands.add_parser("train", help="fine-tune a model on a local dataset"))
    model_server = commands.add_parser(
        "model-server", help="serve a model repository over gRPC and REST like TensorFlow Serving"
    )
    if chosen in (None, "model-server"):
        _add_model_server(model_server)
    serve = commands.add_parser(
        "serve", help="run the model server, a worker and the API on this machine"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address the API listens on")
    serve.add_argument("--port", type=int, default=8000, help="API port")
    serve.add_argument("--grpc-port", type=int, default=8500, help="model server gRPC port")
    serve.add_argument("--rest-port", type=int, default=8501, help="model server REST port")
    serve.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes, one job each at a time"
    )
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
    _add_tune_batching(
        commands.add_parser(
            "tune-batching",
            help="measure a model's latency per batch size; write batching parameters",
            description="Time a SavedModel's batches on this machine and derive TF Serving's"
            " batching parameters (or decide batching should stay off).",
        )
    )
    _add_clients(commands, chosen)
    return parser


def _add_clients(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], chosen: str | None
) -> None:
    """The commands that talk to a running ftserve (its API, or the model server)."""
    jobs = commands.add_parser(
        "jobs",
        help="submit datasets to fine-tune on; watch, list, show and cancel jobs",
        description="Fine-tuning jobs through the API: submit | watch | list | show | cancel."
        " Each action has its own --help.",
    )
    models = commands.add_parser(
        "models", help="list, show, label, roll back and delete models through the API"
    )
    predict = commands.add_parser(
        "predict", help="classify image files, through the API or the model server (gRPC)"
    )
    if chosen in (None, "jobs"):
        from service.client.jobs import add_jobs

        add_jobs(jobs)
    if chosen in (None, "models"):
        from service.client.models import add_models

        add_models(models)
    if chosen in (None, "predict"):
        from service.client.predict import add_predict

        add_predict(predict)


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


def _add_tune_batching(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("model_dir", type=Path, help="a base path (newest version) or a SavedModel")
    tune.add_argument(
        "--output",
        type=Path,
        default=Path("batching_parameters.txt"),
        help="where the batching parameters file goes when batching pays",
    )
    tune.add_argument(
        "--p99-ms",
        type=_positive(float),
        help="longest a batch may take (default: 2x batch 1's p99)",
    )
    tune.add_argument("--signature", default="serving_default")
    tune.add_argument(
        "--max-batch-size", type=_positive(int), default=64, help="largest batch timed"
    )
    tune.add_argument(
        "--repeats", type=_positive(int), default=20, help="batches timed at least, per size"
    )
    tune.add_argument(
        "--min-seconds", type=float, default=1.0, help="time spent at least per batch size"
    )
    tune.add_argument("--image-size", type=_positive(int), help="JPEG side (default: the model's)")
    tune.add_argument("--json", action="store_true", help="print one JSON document")
    tune.set_defaults(handler=_tune_batching)


def _tune_batching(args: argparse.Namespace) -> int:
    from service.model_server.tuning import run_command

    return run_command(args)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _model_server(args: argparse.Namespace) -> int:
    # oneDNN's convolution aborts the whole process on an input of the wrong rank (a CHECK
    # in MklConvOp) where TensorFlow's own kernel answers INVALID_ARGUMENT; one bad request
    # must not take the server down. TF Serving's standard build has oneDNN off too.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
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

    ports = Ports(args.port, args.grpc_port, args.rest_port)
    return serve(get_settings(), args.host, ports, args.workers)


def _positive_int(value: str) -> int:
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return number


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


if __name__ == "__main__":
    sys.exit(main())
