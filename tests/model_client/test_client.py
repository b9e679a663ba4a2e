"""``PredictClient`` against a real ``ftserve model-server`` on loopback.

One server for the module, serving versions 1 and 2 of the same exported model (``all``
policy) with a ``stable`` label on version 1. Answers are compared with what the official
``tensorflow-serving-api`` stubs get for the same request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import numpy as np
import pytest

from service import errors
from service.model_client import PredictClient, PredictResult, PredictTensors, VersionStatus
from service.model_client.codec import decode_tensor
from tests.model_server.conftest import (
    ALLOW_LABELS,
    FTSERVE,
    IMAGE_SIZE,
    MODEL,
    ServerProcess,
    Template,
    free_port,
    image_request,
    outputs,
    two_version_config,
)

T = TypeVar("T")
CLASSES = 3
ALL_OUTPUTS = {"probabilities", "labels", "label_scores"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("serving-client")
    config_path = two_version_config(root, template.version_dir)
    flags = [f"--model_config_file={config_path}", ALLOW_LABELS]
    process = ServerProcess(FTSERVE, flags, root / "server.log")
    process.wait_for_version(1)
    process.wait_for_version(2)
    yield process
    process.stop()


def address(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


def run(
    target: str, call: Callable[[PredictClient], Awaitable[T]], timeout: float = 30, **kwargs
) -> T:
    """``call(client)`` on a fresh event loop with a client opened (and closed) inside it."""

    async def main() -> T:
        client = PredictClient(target, timeout, **kwargs)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


# -- answers ------------------------------------------------------------------------------


def test_predict_images_equals_what_the_official_stubs_get(server, template: Template):
    images = [template.image(i) for i in range(4)]
    result = run(address(server), lambda client: client.predict_images(MODEL, images))
    official = outputs(server.predict_stub.Predict(image_request(images), timeout=30))
    assert (result.model, result.version) == (MODEL, 2)
    assert set(result.outputs) == set(official) == ALL_OUTPUTS
    for alias, expected in official.items():
        assert result.outputs[alias].dtype == expected.dtype, alias
        np.testing.assert_array_equal(result.outputs[alias], expected, err_msg=alias)
    assert result.outputs["probabilities"].shape == (4, CLASSES)
    assert all(isinstance(label, bytes) for label in result.outputs["labels"].ravel())


def test_predict_tensors_are_the_answer_before_decoding(server, template: Template):
    images = [template.image(i) for i in range(3)]

    async def both(client: PredictClient) -> tuple[PredictTensors, PredictResult]:
        return await client.predict_tensors(MODEL, images, version=1), await client.predict_images(
            MODEL, images, version=1
        )

    tensors, decoded = run(address(server), both)
    assert (tensors.model, tensors.version) == (decoded.model, decoded.version) == (MODEL, 1)
    assert set(tensors.outputs) == ALL_OUTPUTS
    for alias, proto in tensors.outputs.items():
        np.testing.assert_array_equal(decode_tensor(proto), decoded.outputs[alias], err_msg=alias)


def test_predict_a_specific_version_and_a_labelled_one(server, template: Template):
    async def both(client: PredictClient) -> tuple[PredictResult, PredictResult]:
        first = await client.predict_images(MODEL, [template.image()], version=1)
        stable = await client.predict_images(MODEL, [template.image()], label="stable")
        return first, stable

    first, stable = run(address(server), both)
    assert (first.model, first.version) == (MODEL, 1)
    assert (stable.model, stable.version) == (MODEL, 1)
    np.testing.assert_array_equal(first.outputs["probabilities"], stable.outputs["probabilities"])


def test_model_status_lists_every_version_or_one(server):
    async def both(client: PredictClient) -> tuple[list[VersionStatus], list[VersionStatus]]:
        return await client.model_status(MODEL), await client.model_status(MODEL, version=1)

    every, one = run(address(server), both)
    assert every == [VersionStatus(1, "AVAILABLE", 0, ""), VersionStatus(2, "AVAILABLE", 0, "")]
    assert one == [VersionStatus(1, "AVAILABLE", 0, "")]


def test_model_metadata_names_the_signatures_inputs_and_outputs(server):
    outputs_info = {
        "label_scores": {"dtype": "DT_FLOAT", "shape": [-1, CLASSES]},
        "labels": {"dtype": "DT_STRING", "shape": [-1, CLASSES]},
        "probabilities": {"dtype": "DT_FLOAT", "shape": [-1, CLASSES]},
    }
    metadata = run(address(server), lambda client: client.model_metadata(MODEL, version=2))
    assert metadata == {
        "serving_default": {
            "inputs": {"image_bytes": {"dtype": "DT_STRING", "shape": [-1]}},
            "outputs": outputs_info,
        },
        "serving_tensor": {
            "inputs": {"images": {"dtype": "DT_FLOAT", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}},
            "outputs": outputs_info,
        },
    }


def test_check_is_true_when_the_server_answers(server):
    assert run(address(server), lambda client: client.check()) is True


# -- errors -------------------------------------------------------------------------------


def raised(target: str, call: Callable[[PredictClient], Awaitable[object]], **kwargs):
    with pytest.raises(errors.FtserveError) as info:
        run(target, call, **kwargs)
    return info.value


def test_unknown_model_is_model_not_found(server, template: Template):
    predict = raised(address(server), lambda c: c.predict_images("nope", [template.image()]))
    status = raised(address(server), lambda c: c.model_status("nope"))
    metadata = raised(address(server), lambda c: c.model_metadata("nope"))
    assert type(predict) is type(status) is type(metadata) is errors.ModelNotFoundError
    assert predict.message == "Servable not found for request: Latest(nope)"
    assert status.message == "Could not find any versions of model nope"


def test_unknown_version_or_label_is_model_not_found(server, template: Template):
    image = [template.image()]
    version = raised(address(server), lambda c: c.predict_images(MODEL, image, version=9))
    label = raised(address(server), lambda c: c.predict_images(MODEL, image, label="canary"))
    assert type(version) is type(label) is errors.ModelNotFoundError
    assert version.message == f"Servable not found for request: Specific({MODEL}, 9)"
    assert label.message == "Unrecognized servable version label: canary"


def test_bytes_that_are_not_an_image_are_not_an_image_error(server, template: Template):
    error = raised(
        address(server), lambda c: c.predict_images(MODEL, [template.image(), b"not an image"])
    )
    assert type(error) is errors.NotAnImageError
    assert error.to_dict() == {
        "error": {
            "code": "not_an_image",
            "message": "An instance is not a JPEG, PNG, GIF, BMP or WebP image",
        }
    }


def test_unknown_signature_is_a_bad_request(server, template: Template):
    error = raised(
        address(server), lambda c: c.predict_images(MODEL, [template.image()], signature="x")
    )
    assert type(error) is errors.BadRequestError
    assert error.message == 'Serving signature key "x" not found.'


def test_a_request_over_the_message_limit_is_too_large(server, template: Template):
    images = [template.image(i) for i in range(4)]
    error = raised(
        address(server), lambda c: c.predict_images(MODEL, images), max_message_bytes=256
    )
    assert type(error) is errors.PayloadTooLargeError


def test_a_deadline_too_short_is_a_timeout(server, template: Template):
    error = raised(
        address(server), lambda c: c.predict_images(MODEL, [template.image()], timeout=1e-4)
    )
    assert type(error) is errors.ModelServerTimeoutError


def test_nothing_listening_is_unavailable_before_the_deadline():
    # A 60 s deadline: answering UNAVAILABLE (not a timeout) shows the client failed fast.
    target = f"127.0.0.1:{free_port()}"
    error = raised(target, lambda c: c.predict_images(MODEL, [b"x"]), timeout=60)
    assert type(error) is errors.ModelServerUnavailableError
    assert error.status == 503
    assert run(target, lambda client: client.check(timeout=60)) is False


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be positive"):
        PredictClient("127.0.0.1:1", 0)
