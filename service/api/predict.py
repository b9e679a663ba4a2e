"""``POST /predict``: read images from JSON (base64) or multipart, ask the model server, rank.

Encoded images go to the model's ``serving_default`` signature as they came; decoding and
resizing happen inside the model. The limits (``predict_max_instances``,
``predict_max_bytes``) are applied while reading, and every image's header is judged
(``image_max_pixels``) before anything is sent: the decoder allocates what a header declares.

Each request is cheap on purpose, as every prediction pays for it: the JSON body is parsed
once, well-formed ``instances`` are taken from it as they are and decoded from base64 once
(pydantic validates only the small options; a body that is not well-formed goes through the
whole request model, for its exact errors), and the reply is built from the model server's
``labels`` and ``label_scores`` tensors as they came off the wire, without numpy.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api.schemas import PredictOptions, PredictRequest
from service.api.uploads import (
    FieldSink,
    PartInfo,
    PartSink,
    read_json,
    read_multipart,
    require_media_type,
)
from service.config import Settings
from service.contract.names import check_model_name
from service.contract.repository import ModelRepository
from service.contract.serving_state import STABLE, ServingState
from service.contract.validation import describe_errors
from service.errors import (
    BadRequestError,
    FtserveError,
    ImageTooLargeError,
    InvalidBase64Error,
    LabelNotFoundError,
    ModelNotFoundError,
    ModelServerUnavailableError,
    NotAnImageError,
    TooManyInstancesError,
    UnprocessableError,
    VersionNotFoundError,
    VersionNotServedError,
)
from service.ingest.images import (
    HEAD_BYTES,
    BombHeaderError,
    UnreadableHeaderError,
    image_kind,
    read_header,
)
from service.model_client.client import PredictClient
from service.model_client.ranking import rank

JSON = "application/json"
MULTIPART = "multipart/form-data"
FILES_FIELD = "files"
_OPTION_FIELDS = ("model", "version", "label", "top_k")
_OPTION_MAX_BYTES = 1024
_URLSAFE = str.maketrans("-_", "+/")
# Images up to this many bytes in all are judged on the event loop. Judging walks a header
# in Python, quick for a real image but up to ~1 µs a byte for a hostile one (thousands of
# empty JPEG markers or GIF sub-blocks): 8 KiB is at worst a few milliseconds, about what
# the GIL would let a thread hold the loop anyway, and much less than a hop to a thread
# costs every request. Larger bodies are judged on a worker thread.
_JUDGE_INLINE_BYTES = 8 * 1024

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class ImageBudget:
    """Counts images and their bytes against the settings' limits as they are read."""

    max_instances: int
    max_bytes: int
    count: int = 0
    size: int = 0

    def add_image(self, count: int = 1) -> None:
        self.count += count
        if self.count > self.max_instances:
            raise TooManyInstancesError(
                f"Send at most {self.max_instances} images per request (predict_max_instances)"
            )

    def add_bytes(self, size: int) -> None:
        self.size += size
        if self.size > self.max_bytes:
            raise TooManyInstancesError(
                f"Send at most {self.max_bytes} bytes of images per request (predict_max_bytes)"
            )


@dataclass
class _ImageSink:
    budget: ImageBudget
    data: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes) -> None:
        self.budget.add_bytes(len(data))
        self.data += data

    def close(self) -> None:
        pass


async def read_predict_request(
    request: Request, settings: Settings
) -> tuple[PredictOptions, list[bytes]]:
    """The options and the encoded images of a JSON or multipart ``/predict`` request."""
    budget = ImageBudget(settings.predict_max_instances, settings.predict_max_bytes)
    if require_media_type(request, JSON, MULTIPART) == JSON:
        options, images = await _read_json(request, budget)
        field = "instances"
    else:
        options, images = await _read_multipart(request, budget)
        field = FILES_FIELD
    check_model_name(options.model)
    if options.version is not None and options.label is not None:
        raise BadRequestError("Ask for a version or a label, not both")
    if sum(len(image) for image in images) <= _JUDGE_INLINE_BYTES:
        check_images(images, field, settings.image_max_pixels)
    else:
        await run_in_threadpool(check_images, images, field, settings.image_max_pixels)
    return options, images


def check_images(images: list[bytes], field: str, max_pixels: int) -> None:
    """Refuse images that are not JPEG, PNG, GIF, BMP or WebP, or whose header declares too much.

    Judged by header alone (``service.ingest.images``), as the model server's decoder would
    allocate the declared canvas before reading a pixel. ``field`` names the images in
    messages: ``instances[2]`` or ``files[2]``.

    Raises:
        NotAnImageError: another format, or a header that cannot be read.
        ImageTooLargeError: more than ``max_pixels`` declared (``image_max_pixels``).
    """
    for index, image in enumerate(images):
        _check_image(f"{field}[{index}]", image, max_pixels)


def _check_image(name: str, image: bytes, max_pixels: int) -> None:
    kind = image_kind(image[:HEAD_BYTES])
    if kind is None:
        raise NotAnImageError(f"{name} is not a JPEG, PNG, GIF, BMP or WebP image")
    try:
        header = read_header(image, kind)
    except BombHeaderError as exc:
        raise ImageTooLargeError(f"{name} is a {kind} too large to decode: {exc}") from exc
    except UnreadableHeaderError as exc:
        raise NotAnImageError(f"{name} starts like a {kind} but its header is damaged") from exc
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name} is a {header.width}x{header.height} {kind} ({header.pixels} pixels),"
            f" more than {max_pixels} (image_max_pixels)"
        )


async def predict(
    client: PredictClient,
    options: PredictOptions,
    images: list[bytes],
    repository: ModelRepository,
) -> dict[str, Any]:
    """Run the model on ``images`` and rank each answer's labels.

    With neither a version nor a label, the label ``stable`` answers. When the model server
    does not know what was asked for, the serving state tells the user why (``_explain``).

    Returns:
        The reply's body, as ``PredictResponse`` describes it.
    """
    label = None if options.version is not None else (options.label or STABLE)
    try:
        answer = await client.predict_tensors(
            options.model, images, version=options.version, label=label
        )
    except ModelNotFoundError as exc:
        state = await run_in_threadpool(_serving_facts, repository, options.model)
        raise _explain(options.model, options.version, label, *state) from exc
    predictions = rank(answer.outputs, options.top_k)
    return {"model": answer.model, "version": answer.version, "predictions": predictions}


def _serving_facts(repository: ModelRepository, model: str) -> tuple[list[int], ServingState]:
    return repository.versions(model), repository.serving_state(model)


def _explain(
    model: str,
    version: int | None,
    label: str | None,
    on_disk: list[int],
    state: ServingState,
) -> FtserveError:
    """Why the model server had no answer for the request, as the user's error.

    503 only where the serving state says it is served and the model server has merely not
    loaded it (or polled the new config) yet; otherwise a 404 that says what is served.
    """
    if not on_disk:
        return ModelNotFoundError(f"No model named {model!r} in the model repository")
    served = ", ".join(str(v) for v in state.served) or "none"
    labels = ", ".join(f"{k} → {v}" for k, v in sorted(state.labels.items())) or "none"
    if version is not None:
        if version not in on_disk:
            return VersionNotFoundError(f"Model {model!r} has no version {version}")
        if version not in state.served:
            return VersionNotServedError(
                f"Version {version} of model {model!r} is not served (served: {served}); serve"
                f" it by pointing a label at it: PUT /models/{model}/labels/<label>"
                f' {{"version": {version}}}'
            )
        return ModelServerUnavailableError(
            f"Version {version} of model {model!r} is served but the model server has not"
            " loaded it yet"
        )
    assert label is not None
    if label not in state.labels:
        return LabelNotFoundError(
            f"Model {model!r} has no label {label!r} (labels: {labels}); ask for a label or a"
            " version"
        )
    return ModelServerUnavailableError(
        f"Label {label!r} of model {model!r} points at version {state.labels[label]}, which the"
        " model server has not loaded yet"
    )


async def _read_json(request: Request, budget: ImageBudget) -> tuple[PredictOptions, list[bytes]]:
    # Base64 is 4/3 of the bytes; JSON may escape "/" as "\/". Twice the limit is generous.
    body = await read_json(request, 2 * budget.max_bytes + 1024**2, TooManyInstancesError)
    texts = _plain_instances(body)
    if texts is None:
        # Not the usual shape: the whole model says what is wrong (and raises, as a rule).
        parsed = _validated(PredictRequest, body)
        texts = [instance.b64 for instance in parsed.instances]
        options = PredictOptions.model_validate(parsed.model_dump(exclude={"instances"}))
    else:
        options = _validated(PredictOptions, {k: v for k, v in body.items() if k != "instances"})
    return options, decode_instances(texts, budget)


def _plain_instances(body: Any) -> list[str] | None:
    """The base64 texts of a body whose ``instances`` are all ``{"b64": "<text>"}``, else None.

    What ``PredictRequest`` would accept for ``instances``, checked without building a model
    per image: pydantic would walk every image's text again.
    """
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        return None
    texts = []
    for instance in instances:
        text = instance.get("b64") if isinstance(instance, dict) and len(instance) == 1 else None
        if not isinstance(text, str):
            return None
        texts.append(text)
    return texts


def _validated(model: type[Model], body: Any) -> Model:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UnprocessableError(describe_errors(exc.errors(), "request")) from exc


def decode_instances(texts: Sequence[str], budget: ImageBudget) -> list[bytes]:
    """The images of TF Serving style ``{"b64": ...}`` instances, standard or URL-safe base64."""
    budget.add_image(len(texts))
    images = []
    for index, text in enumerate(texts):
        image = _b64decode(text)
        if image is None:
            raise InvalidBase64Error(f"instances[{index}].b64 is not valid base64")
        budget.add_bytes(len(image))
        images.append(image)
    return images


def _b64decode(text: str) -> bytes | None:
    """``text`` decoded (strictly: nothing but the alphabet and its padding), or None.

    Straight from the str, which binascii reads in place when it is ASCII; URL-safe base64
    is translated (a copy) only once the standard alphabet has failed.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        pass
    try:
        return binascii.a2b_base64(text.translate(_URLSAFE), strict_mode=True)
    except ValueError:
        return None


async def _read_multipart(
    request: Request, budget: ImageBudget
) -> tuple[PredictOptions, list[bytes]]:
    fields = {name: FieldSink(name, _OPTION_MAX_BYTES) for name in _OPTION_FIELDS}
    images: list[_ImageSink] = []

    def open_part(part: PartInfo) -> PartSink:
        if part.name == FILES_FIELD:
            budget.add_image()
            images.append(_ImageSink(budget))
            return images[-1]
        if part.name in fields:
            return fields[part.name].open()
        raise BadRequestError(f"Unexpected form field {part.name!r}")

    await read_multipart(request, open_part)
    values = {name: sink.text() for name, sink in fields.items() if sink.seen}
    try:
        options = PredictOptions.model_validate(values)
    except ValidationError as exc:
        raise UnprocessableError(describe_errors(exc.errors(), "form")) from exc
    if not images:
        raise UnprocessableError(f"Send at least one image as form field {FILES_FIELD!r}")
    return options, [bytes(sink.data) for sink in images]
