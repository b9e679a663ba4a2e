"""Models in the repository: list them, describe one, download a version's ONNX file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse

from service.api.deps import PredictClientDep, SettingsDep
from service.api.models import describe_model, list_models, onnx_path
from service.api.schemas import ModelDetail, ModelList, error_responses
from service.contract.names import MODEL_NAME_PATTERN
from service.contract.repository import ModelRepository
from service.errors import (
    InvalidModelNameError,
    ModelNotFoundError,
    UnauthorizedError,
    UnprocessableError,
)

router = APIRouter(prefix="/models", tags=["models"])


def get_repository(settings: SettingsDep) -> ModelRepository:
    return ModelRepository(settings.model_repo)


RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
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
def get_models(repository: RepositoryDep) -> ModelList:
    return ModelList(models=list_models(repository))


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
    path = onnx_path(repository, name, version)
    filename = f"{name}-{version}.onnx"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)
