"""Models in the repository: list them, describe one, download a version's ONNX file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse

from service.api.deps import PredictClientDep, SettingsDep
from service.api.models_repo import ModelRepositoryView, describe_model, onnx_file
from service.api.schemas import ModelDetail, ModelList, ModelSummary, error_responses
from service.errors import (
    InvalidModelNameError,
    ModelNotFoundError,
    UnauthorizedError,
    UnprocessableError,
)
from service.training.options import MODEL_NAME_PATTERN

router = APIRouter(prefix="/models", tags=["models"])


def get_repository(settings: SettingsDep) -> ModelRepositoryView:
    return ModelRepositoryView(settings.model_repo)


RepositoryDep = Annotated[ModelRepositoryView, Depends(get_repository)]
# The pattern is documented, not enforced by FastAPI: check_model_name answers a mismatch
# with 400 invalid_model_name rather than a generic 422.
ModelName = Annotated[
    str,
    Path(description="The model's name.", json_schema_extra={"pattern": MODEL_NAME_PATTERN}),
]


@router.get(
    "",
    response_model=ModelList,
    summary="Models in the repository and their versions",
    responses=error_responses(UnauthorizedError),
)
def list_models(repository: RepositoryDep) -> ModelList:
    models = repository.models()
    return ModelList(
        models=[ModelSummary(name=name, versions=versions) for name, versions in models.items()]
    )


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="A model's versions, their serving status and model cards",
    responses=error_responses(InvalidModelNameError, UnauthorizedError, ModelNotFoundError),
)
async def get_model(
    name: ModelName, repository: RepositoryDep, client: PredictClientDep
) -> ModelDetail:
    return await describe_model(repository, client, name)


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
def download_onnx(
    name: ModelName, version: Annotated[int, Path(ge=1)], repository: RepositoryDep
) -> FileResponse:
    path = onnx_file(repository.version_path(name, version))
    if path is None:
        raise ModelNotFoundError(f"Version {version} of model {name!r} has no ONNX file")
    filename = f"{name}-{version}.onnx"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
