"""Models in the repository: list, describe, label, roll back, delete; download ONNX; look at
the validation images a version got wrong."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response

from service.api.deps import LifecycleDep, PredictClientDep, RepositoryDep
from service.api.misclassified import (
    CACHE_CONTROL,
    MisclassifiedList,
    list_misclassified,
    thumbnail_bytes,
)
from service.api.models import (
    describe_model,
    list_models,
    model_card_path,
    model_versions,
    onnx_path,
)
from service.api.schemas import (
    MAX_VERSION,
    Deleted,
    LabelMove,
    ModelDetail,
    ModelList,
    error_responses,
)
from service.contract.names import MODEL_NAME_PATTERN, check_model_name
from service.contract.serving_state import LABEL_PATTERN
from service.errors import (
    InvalidLabelError,
    InvalidModelNameError,
    LabelInUseError,
    LabelNotFoundError,
    ModelNotFoundError,
    ModelServerTimeoutError,
    NoPreviousVersionError,
    NotFoundError,
    UnauthorizedError,
    UnprocessableError,
    VersionFailedError,
    VersionLabelledError,
    VersionNotFoundError,
)

router = APIRouter(prefix="/models", tags=["models"])

# The patterns are documented, not enforced by FastAPI: check_model_name and check_label
# answer a mismatch with 400 invalid_model_name / invalid_label rather than a generic 422.
ModelName = Annotated[
    str,
    Path(description="The model's name.", json_schema_extra={"pattern": MODEL_NAME_PATTERN}),
]
Label = Annotated[
    str,
    Path(
        description="A label: stable, canary or your own.",
        json_schema_extra={"pattern": LABEL_PATTERN},
    ),
]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
Force = Annotated[bool, Query(description="Also when the label(s) still carry traffic.")]
ThumbnailFile = Annotated[
    str, Path(description="A file name from the version's misclassified list, e.g. 0001.jpg.")
]
_MODEL_ERRORS = (InvalidModelNameError, UnauthorizedError, ModelNotFoundError)


@router.get(
    "",
    response_model=ModelList,
    summary="Models in the repository, their versions and labels",
    responses=error_responses(UnauthorizedError),
)
def get_models(repository: RepositoryDep) -> ModelList:
    return ModelList(models=list_models(repository))


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="A model's labels and versions: served, state, metrics, promotion decision",
    responses=error_responses(*_MODEL_ERRORS),
)
async def get_model(
    name: ModelName, repository: RepositoryDep, client: PredictClientDep
) -> ModelDetail:
    return await describe_model(repository, client, name)


@router.put(
    "/{name}/labels/{label}",
    response_model=ModelDetail,
    summary="Point a label at a version, once the model server has loaded it",
    responses=error_responses(
        *_MODEL_ERRORS,
        InvalidLabelError,
        VersionNotFoundError,
        VersionFailedError,
        UnprocessableError,
        ModelServerTimeoutError,
    ),
)
async def put_label(
    name: ModelName,
    label: Label,
    move: LabelMove,
    lifecycle: LifecycleDep,
    repository: RepositoryDep,
    client: PredictClientDep,
) -> ModelDetail:
    check_model_name(name)
    await lifecycle.set_label(name, label, move.version)
    return await describe_model(repository, client, name)


@router.delete(
    "/{name}/labels/{label}",
    response_model=ModelDetail,
    summary="Remove a label (stable only with force while other versions exist)",
    responses=error_responses(
        *_MODEL_ERRORS, InvalidLabelError, LabelNotFoundError, LabelInUseError
    ),
)
async def delete_label(
    name: ModelName,
    label: Label,
    lifecycle: LifecycleDep,
    repository: RepositoryDep,
    client: PredictClientDep,
    force: Force = False,
) -> ModelDetail:
    model_versions(repository, name)
    await lifecycle.drop_label(name, label, force)
    return await describe_model(repository, client, name)


@router.post(
    "/{name}/rollback",
    response_model=ModelDetail,
    summary="Point stable back at the version it pointed at before",
    responses=error_responses(
        *_MODEL_ERRORS, NoPreviousVersionError, VersionFailedError, ModelServerTimeoutError
    ),
)
async def roll_back(
    name: ModelName, lifecycle: LifecycleDep, repository: RepositoryDep, client: PredictClientDep
) -> ModelDetail:
    model_versions(repository, name)
    await lifecycle.roll_back(name)
    return await describe_model(repository, client, name)


@router.delete(
    "/{name}/versions/{version}",
    response_model=Deleted,
    summary="Delete a version no label points at (its number is never reused)",
    responses=error_responses(
        *_MODEL_ERRORS, VersionNotFoundError, VersionLabelledError, ModelServerTimeoutError
    ),
)
async def delete_version(name: ModelName, version: Version, lifecycle: LifecycleDep) -> Deleted:
    check_model_name(name)
    await lifecycle.delete_version(name, version)
    return Deleted(name=name, deleted_versions=[version])


@router.delete(
    "/{name}",
    response_model=Deleted,
    summary="Delete every version of a model (with labels only with force)",
    responses=error_responses(*_MODEL_ERRORS, LabelInUseError, ModelServerTimeoutError),
)
async def delete_model(name: ModelName, lifecycle: LifecycleDep, force: Force = False) -> Deleted:
    check_model_name(name)
    return Deleted(name=name, deleted_versions=await lifecycle.delete_model(name, force))


@router.get(
    "/{name}/versions/{version}/onnx",
    response_class=FileResponse,
    summary="Download a version as ONNX",
    responses={
        200: {
            "description": "The ONNX model.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **error_responses(
            InvalidModelNameError, UnauthorizedError, ModelNotFoundError, UnprocessableError
        ),
    },
)
def download_onnx(name: ModelName, version: Version, repository: RepositoryDep) -> FileResponse:
    path = onnx_path(repository, name, version)
    filename = f"{name}-{version}.onnx"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.get(
    "/{name}/versions/{version}/model_card",
    response_class=FileResponse,
    summary="Download a version's model card",
    responses={
        200: {
            "description": "The model card written when the version was published: its"
            " training config, data split, evaluation, lineage and promotion decision.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **error_responses(
            InvalidModelNameError, UnauthorizedError, ModelNotFoundError, UnprocessableError
        ),
    },
)
def download_model_card(
    name: ModelName, version: Version, repository: RepositoryDep
) -> FileResponse:
    path = model_card_path(repository, name, version)
    filename = f"{name}-{version}-model_card.json"
    return FileResponse(path, media_type="application/json", filename=filename)


@router.get(
    "/{name}/versions/{version}/misclassified",
    response_model=MisclassifiedList,
    summary="Validation images the version got wrong, most confident mistakes first",
    responses=error_responses(*_MODEL_ERRORS, VersionNotFoundError, UnprocessableError),
)
def get_misclassified(
    name: ModelName, version: Version, repository: RepositoryDep
) -> MisclassifiedList:
    return list_misclassified(repository, name, version)


@router.get(
    "/{name}/versions/{version}/misclassified/{file}",
    response_class=Response,
    summary="One thumbnail of a misclassified validation image",
    responses={
        200: {
            "description": "The thumbnail, longest side at most 128 pixels.",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(*_MODEL_ERRORS, VersionNotFoundError, NotFoundError, UnprocessableError),
    },
)
def get_misclassified_image(
    name: ModelName, version: Version, file: ThumbnailFile, repository: RepositoryDep
) -> Response:
    content = thumbnail_bytes(repository, name, version, file)
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": CACHE_CONTROL})
