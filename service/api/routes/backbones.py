"""The backbones a fine-tuning job may start from, for forms and clients to offer."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.schemas import BackboneList, error_responses
from service.errors import UnauthorizedError

router = APIRouter(prefix="/backbones", tags=["backbones"])


@router.get(
    "",
    response_model=BackboneList,
    summary="The backbones a job may set as base_model",
    responses=error_responses(UnauthorizedError),
)
async def list_backbones() -> BackboneList:
    """Each backbone's default and smallest image size, the pixel preprocessing its weights
    expect, and whether ImageNet weights exist for it; `default` is the one a job gets when
    it names none."""
    return BackboneList.from_contract()
