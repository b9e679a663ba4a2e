"""``ftserve predict``: classify image files with a served model.

By default through the API (``POST /predict``, images as base64 JSON); with ``--grpc`` straight
from the model server's PredictionService, through the lean stubs the API itself uses, for
the lowest latency. Both print the same table, and with ``--json`` the same document.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from service.client.common import (
    InputError,
    add_api_options,
    api_client,
    positive_int,
    run_reporting_errors,
    table,
    usage_error,
)
from service.contract.serving_state import STABLE
from service.contract.signatures import LABEL_SCORES, LABELS, PROBABILITIES
from service.errors import FtserveError, ModelServerTimeoutError, ModelServerUnavailableError

DEFAULT_TOP_K = 5
GRPC_TIMEOUT_SECONDS = 30.0

_EPILOG = """\
examples:
  ftserve predict flowers rose.jpg tulip.png
  ftserve predict flowers rose.jpg --label canary --top-k 3
  ftserve predict flowers rose.jpg --grpc 127.0.0.1:8500 --json

Without --version or --label the label `stable` answers, as POST /predict does.
exit status: 0 answered; 2 a bad command line or image, or the API or model server refused."""


def add_predict(parser: argparse.ArgumentParser) -> None:
    """``predict``'s arguments."""
    parser.description = (
        "Classify image files with a served model: through the API (POST /predict), or with"
        " --grpc straight from the model server. Prints a row per image and rank."
    )
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", metavar="MODEL", help="the model's name")
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG, GIF, BMP or WebP files"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=positive_int, help="ask this version")
    which.add_argument("--label", help="ask the version this label points at (e.g. canary)")
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=DEFAULT_TOP_K,
        help=f"labels per image, best first (default {DEFAULT_TOP_K}; at most the model's)",
    )
    parser.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help="ask the model server at HOST:PORT over gRPC instead of the API",
    )
    add_api_options(
        parser,
        "seconds to wait for the answer (default: 330; 30 with --grpc)",
        json_help="print the API's JSON document (with --grpc, one of the same form)",
    )
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Classify the images; print the table (or the JSON document)."""
    if args.grpc is not None and not _is_address(args.grpc):
        return usage_error(f"--grpc takes HOST:PORT, not {args.grpc!r}")

    def action() -> int:
        images = read_images(args.images)
        ask = predict_http if args.grpc is None else predict_grpc
        document = ask(args, images)
        names = [str(path) for path in args.images]
        print(json.dumps(document) if args.json else predictions_view(document, names))
        return 0

    return run_reporting_errors(action, args.json)


def read_images(paths: list[Path]) -> list[bytes]:
    """Each file's bytes, once it is known to be a readable image.

    Raises:
        InputError: a path that is missing, a folder, unreadable, or not an image.
    """
    from service.ingest.images import HEAD_BYTES, image_kind  # Pillow: only when predicting

    images = []
    for path in paths:
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            raise InputError(f"Image {path} is a folder, not a file") from None
        except OSError as exc:
            raise InputError(f"Cannot read image {path}: {exc.strerror or exc}") from exc
        if image_kind(data[:HEAD_BYTES]) is None:
            raise InputError(f"{path} is not a JPEG, PNG, GIF, BMP or WebP image")
        images.append(data)
    return images


def predict_http(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    """``POST /predict``: the API's answer as it came."""
    body: dict[str, Any] = {
        "model": args.model,
        "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images],
        "top_k": args.top_k,
    }
    if args.version is not None:
        body["version"] = args.version
    if args.label is not None:
        body["label"] = args.label
    return api_client(args).predict(body)


def predict_grpc(args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    """Ask the model server directly; the answer in the API's form."""
    # Imported here: grpc and numpy are only needed on this path.
    from service.model_client.client import PredictClient, PredictResult

    label = None if args.version is not None else (args.label or STABLE)
    timeout = args.timeout or GRPC_TIMEOUT_SECONDS

    async def ask() -> PredictResult:
        client = PredictClient(args.grpc, timeout)
        try:
            return await client.predict_images(
                args.model, images, version=args.version, label=label
            )
        finally:
            await client.close()

    try:
        result = asyncio.run(ask())
    except (ModelServerUnavailableError, ModelServerTimeoutError) as exc:
        # Which server it was matters here: the user typed its address.
        raise type(exc)(f"{exc.message} (model server at {args.grpc})") from exc
    predictions = rank(result.outputs, args.top_k)
    return {"model": result.model, "version": result.version, "predictions": predictions}


def rank(outputs: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    """One prediction per image from the signature's outputs, as ``POST /predict`` ranks:
    ``labels`` and ``label_scores`` (best first) when the model has them, else
    ``probabilities`` sorted, labelled by class index."""
    import numpy as np

    if LABELS in outputs and LABEL_SCORES in outputs:
        labels, scores = outputs[LABELS], outputs[LABEL_SCORES]
    elif PROBABILITIES in outputs:
        order = np.argsort(-outputs[PROBABILITIES], axis=1, kind="stable")
        labels = order.astype(str)
        scores = np.take_along_axis(outputs[PROBABILITIES], order, axis=1)
    else:
        raise FtserveError("The model answered without labels or probabilities")
    predictions = []
    for row_labels, row_scores in zip(labels, scores, strict=True):
        ranked = [
            {"label": _text(label), "score": float(score)}
            for label, score in zip(row_labels[:top_k], row_scores[:top_k], strict=True)
        ]
        if not ranked:
            raise FtserveError("The model answered with no labels")
        predictions.append({**ranked[0], "top_k": ranked})
    return predictions


def predictions_view(document: dict[str, Any], names: list[str]) -> str:
    """The model and version that answered, then a row per image and rank."""
    rows = [
        [name, str(rank_), entry["label"], f"{entry['score']:.4f}"]
        for name, prediction in zip(names, document["predictions"], strict=True)
        for rank_, entry in enumerate(prediction["top_k"], start=1)
    ]
    heading = f"{document['model']} version {document['version']}"
    return f"{heading}\n{table(['IMAGE', 'RANK', 'LABEL', 'SCORE'], rows)}"


def _text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _is_address(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
