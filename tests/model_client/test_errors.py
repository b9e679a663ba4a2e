"""``map_grpc_errors``: the one place gRPC status codes become ``service.errors`` classes."""

from __future__ import annotations

import grpc
import pytest

from service import errors
from service.model_client.client import map_grpc_errors

Code = grpc.StatusCode


def mapped(code: grpc.StatusCode, details: str) -> errors.FtserveError:
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    with pytest.raises(errors.FtserveError) as info, map_grpc_errors():
        raise rpc_error
    assert info.value.__cause__ is rpc_error
    return info.value


@pytest.mark.parametrize(
    ("code", "details", "error", "message"),
    [
        (
            Code.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
            errors.ModelNotFoundError,
            "Servable not found for request: Latest(nope)",
        ),
        (
            Code.INVALID_ARGUMENT,
            "Unrecognized servable version label: canary",
            errors.ModelNotFoundError,
            "Unrecognized servable version label: canary",
        ),
        (
            Code.INVALID_ARGUMENT,
            "input image_bytes[3] is a 30000x30000 GIF (900000000 pixels), more than the limit"
            " 40000000",
            errors.ImageTooLargeError,
            "input image_bytes[3] is a 30000x30000 GIF (900000000 pixels), more than the limit"
            " 40000000",
        ),
        (
            Code.INVALID_ARGUMENT,
            "Unknown image file format. One of JPEG, PNG, GIF, BMP required.\n\t [[{{node x}}]]",
            errors.NotAnImageError,
            "An instance is not a JPEG, PNG, GIF, BMP or WebP image",
        ),
        (
            Code.INVALID_ARGUMENT,
            "Invalid JPEG data or crop window, data size 12",
            errors.NotAnImageError,
            "An instance is not a JPEG, PNG, GIF, BMP or WebP image",
        ),
        (
            Code.INVALID_ARGUMENT,
            "Task size 40 is larger than maximum input batch size 32",
            errors.TooManyInstancesError,
            "Task size 40 is larger than maximum input batch size 32",
        ),
        (
            Code.INVALID_ARGUMENT,
            "Expects arg[0] to be string but float is provided\n\t [[{{node y}}]]",
            errors.BadRequestError,
            "Expects arg[0] to be string but float is provided",
        ),
        (
            Code.FAILED_PRECONDITION,
            'Serving signature key "x" not found.',
            errors.BadRequestError,
            'Serving signature key "x" not found.',
        ),
        (
            Code.RESOURCE_EXHAUSTED,
            "Received message larger than max (70000000 vs. 67108864)",
            errors.PayloadTooLargeError,
            "The request or its answer exceeds the model server's message size limit;"
            " send fewer or smaller images",
        ),
        (
            Code.RESOURCE_EXHAUSTED,
            "The batch scheduling queue to which this task was submitted is full",
            errors.ModelServerUnavailableError,
            "The model server is unavailable or the model is still loading; retry shortly",
        ),
        (
            Code.UNAVAILABLE,
            "Servable Latest(shapes) is loading; no version is available yet",
            errors.ModelServerUnavailableError,
            "The model server is unavailable or the model is still loading; retry shortly",
        ),
        (
            Code.UNAVAILABLE,
            "failed to connect to all addresses; last error: 10.0.0.7:8500 refused",
            errors.ModelServerUnavailableError,
            "The model server is unavailable or the model is still loading; retry shortly",
        ),
        (
            Code.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            errors.ModelServerTimeoutError,
            "The model server did not answer in time",
        ),
    ],
)
def test_status_codes_map_to_the_error_a_user_sees(code, details, error, message):
    exc = mapped(code, details)
    assert type(exc) is error
    assert exc.message == message


@pytest.mark.parametrize(
    "code", [Code.INTERNAL, Code.UNKNOWN, Code.UNIMPLEMENTED, Code.DATA_LOSS, Code.CANCELLED]
)
def test_other_failures_are_internal_errors_without_the_servers_words(code):
    exc = mapped(code, "/srv/models/shapes/3/variables: stack trace at 0x7f3a")
    assert type(exc) is errors.FtserveError
    assert exc.to_dict() == {
        "error": {"code": "internal", "message": "The model server failed to answer"}
    }


def test_other_exceptions_pass_through():
    with pytest.raises(KeyError), map_grpc_errors():
        raise KeyError("not a gRPC failure")
