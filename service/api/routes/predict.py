"""Predictions: images in, ranked labels out, through the model server."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.deps import PredictClientDep, RepositoryDep, SettingsDep
from service.api.predict import FILES_FIELD, predict, read_predict_request
from service.api.schemas import MAX_TOP_K, MAX_VERSION, PredictResponse, error_responses
from service.contract.names import MODEL_NAME_PATTERN
from service.errors import (
    BadRequestError,
    ImageTooLargeError,
    InvalidBase64Error,
    InvalidModelNameError,
    LabelNotFoundError,
    ModelNotFoundError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
    NotAnImageError,
    PayloadTooLargeError,
    TooManyInstancesError,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaTypeError,
    VersionNotFoundError,
    VersionNotServedError,
)

router = APIRouter(tags=["predict"])

# PredictOptions as form fields (strings on the wire, read with the same model).
_OPTION_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string", "maxLength": 63, "pattern": MODEL_NAME_PATTERN},
    "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
    "label": {"type": "string", "minLength": 1, "maxLength": 255},
    "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
}
_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {
                "schema": {
                    # VERSION_OR_LABEL is left out here: schemathesis 4.32 cannot generate
                    # a "not" next to binary parts. The JSON body's schema carries it.
                    "type": "object",
                    "required": ["model", FILES_FIELD],
                    "properties": {
                        **_OPTION_PROPERTIES,
                        FILES_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "JPEG, PNG, GIF, BMP or WebP images, one part each.",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify images",
    responses=error_responses(
        BadRequestError,
        InvalidBase64Error,
        NotAnImageError,
        InvalidModelNameError,
        UnauthorizedError,
        ModelNotFoundError,
        VersionNotFoundError,
        VersionNotServedError,
        LabelNotFoundError,
        TooManyInstancesError,
        ImageTooLargeError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        UnprocessableError,
        ModelServerUnavailableError,
        ModelServerTimeoutError,
    ),
    openapi_extra=_PREDICT_BODY,
)
async def predict_images(
    request: Request, settings: SettingsDep, client: PredictClientDep, repository: RepositoryDep
) -> JSONResponse:
    """JSON ``{"model", "instances": [{"b64": ...}]}`` (TF Serving's REST form) or multipart."""
    options, images = await read_predict_request(request, settings)
    # The body is built as PredictResponse describes it and encoded once: returned as a
    # model, it would be validated against the schema and serialized again on every call.
    return JSONResponse(await predict(client, options, images, repository))
