"""``POST /finetune``: read a submission, vet it, queue its job, at most once per key.

A submission is a multipart body (``dataset`` archive + ``config`` JSON string) or a JSON
body (the config's fields + ``data_uri``, a folder under the data root). The archive is
streamed to ``<uploads>/<job id>.upload.<random>.partial``, hashed and counted as it
arrives, vetted without extracting it, then renamed to ``<job id>.upload`` just before the
job row is written. Whatever fails on the way, nothing half-written stays behind: no
partial file, no upload without a job, no key left "accepting".

Idempotency-Key: the first request with a key owns it until its job is queued (then the
key remembers the response) or it fails (then the key is forgotten). A retry with the same
body gets the same response; another body is ``idempotency_key_reused``; a retry while the
first is still being accepted is ``idempotency_in_flight``. The owner renews its hold on the
key every few seconds while it reads, vets and queues; a key left unrenewed (its API process
died mid-upload) is taken over by the next request with it seconds later.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api.schemas import FinetuneAccepted
from service.api.upload_folder import FileSink, HeldUploads
from service.api.uploads import (
    FieldSink,
    PartInfo,
    PartSink,
    check_declared_length,
    declared_length,
    read_json,
    read_multipart,
    require_media_type,
)
from service.config import Settings
from service.contract.train_config import TrainConfig, check_weights
from service.errors import (
    BadRequestError,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
    InvalidConfigError,
    InvalidDataUriError,
    PayloadTooLargeError,
    QueueFullError,
    UploadTooLargeError,
)
from service.ingest.archive import scan_archive
from service.jobs.records import IdempotencyRecord, Job
from service.jobs.store import JobStore

log = logging.getLogger(__name__)

JSON = "application/json"
MULTIPART = "multipart/form-data"
DATASET_FIELD = "dataset"
CONFIG_FIELD = "config"
CONFIG_MAX_BYTES = 256 * 1024  # the config form field, or a whole JSON body
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers
# The request that owns an "accepting" key renews it this often; a key not renewed for the
# lease belongs to a request that died (e.g. its API process was killed mid-upload), and the
# next request with it takes it over. The lease spans several renewals, so that a slow
# database round or two does not hand a live request's key to a retry.
IDEMPOTENCY_RENEW_SECONDS = 2.0
IDEMPOTENCY_LEASE_SECONDS = 10.0


@dataclass(frozen=True)
class Accepted:
    """The 202 answer: its body, and whether it repeats an earlier request's."""

    body: dict[str, Any]
    replayed: bool = False

    @property
    def location(self) -> str:
        return f"/finetune/{self.body['job_id']}"


@dataclass(frozen=True)
class KeyClaim:
    """An Idempotency-Key this request owns, under its own owner token."""

    key: str
    owner: str


@dataclass
class Submission:
    """A request as read: the config object, and a data_uri or an uploaded archive."""

    config: dict[str, Any]
    data_uri: object = None
    upload: FileSink | None = None

    def request_hash(self) -> str:
        """What identifies the request for its Idempotency-Key: config, folder, upload bytes."""
        upload = None if self.upload is None else self.upload.sha256.hexdigest()
        identity = {"config": self.config, "data_uri": self.data_uri, "upload_sha256": upload}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.discard()


async def accept_finetune(
    request: Request, settings: Settings, store: JobStore, key: str | None
) -> Accepted:
    """Queue the job ``request`` describes, or repeat the answer given to ``key`` before."""
    if key is None:
        return await _accept(request, settings, store, None)
    claim = KeyClaim(key, owner=uuid.uuid4().hex)
    begin = partial(store.begin_idempotent, key, claim.owner, stale_after=IDEMPOTENCY_LEASE_SECONDS)
    prior = await run_in_threadpool(begin)
    if prior is not None:
        return await _replay(request, settings, prior)
    try:
        async with _renewing(store, claim):
            return await _accept(request, settings, store, claim)
    except BaseException:
        await _best_effort(partial(store.abandon_idempotent, key, claim.owner))
        raise


@asynccontextmanager
async def _renewing(store: JobStore, claim: KeyClaim) -> AsyncIterator[None]:
    """Renew ``claim`` in the background for as long as the block runs."""
    renewer = asyncio.create_task(_renew(store, claim))
    try:
        yield
    finally:
        # Not awaited: a renewal already in its thread may still land, and is harmless, as
        # it only touches a key still "accepting" under this owner.
        renewer.cancel()


async def _renew(store: JobStore, claim: KeyClaim) -> None:
    while True:
        await anyio.sleep(IDEMPOTENCY_RENEW_SECONDS)
        try:
            held = await run_in_threadpool(store.renew_idempotent, claim.key, claim.owner)
        except Exception:  # e.g. the database away for a moment: try again next time
            log.warning("could not renew Idempotency-Key %r", claim.key, exc_info=True)
            continue
        if not held:
            log.warning("Idempotency-Key %r was taken over by another request", claim.key)
            return


async def _replay(request: Request, settings: Settings, prior: IdempotencyRecord) -> Accepted:
    if prior.state != "done" or prior.response is None:
        raise IdempotencyInFlightError(
            f"A request with Idempotency-Key {prior.key!r} is still being accepted; retry later"
        )
    submission = await read_submission(request, settings, f"replay-{uuid.uuid4().hex}")
    submission.discard()  # only its hash was needed
    if submission.request_hash() != prior.request_hash:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {prior.key!r} was used for a different request"
        )
    return Accepted(prior.response, replayed=True)


async def _accept(
    request: Request, settings: Settings, store: JobStore, claim: KeyClaim | None
) -> Accepted:
    # Refuse before reading what may be gigabytes; enqueue checks again, atomically.
    if await run_in_threadpool(store.queue_depth) >= settings.max_queue_depth:
        raise QueueFullError(f"{settings.max_queue_depth} jobs are already queued; retry later")
    job_id = uuid.uuid4().hex
    submission = await read_submission(request, settings, job_id)
    job: Job | None = None
    try:
        config = TrainConfig.parse(submission.config)
        check_weights(config, settings.weights_dir)
        dataset = await _vetted_dataset(submission, settings)
        enqueue = partial(
            store.enqueue,
            config.model_name,
            config.model_dump(mode="json", exclude={"model_name"}),
            str(dataset),
            max_queue_depth=settings.max_queue_depth,
            job_id=job_id,
        )
        job = await run_in_threadpool(enqueue)
        body = FinetuneAccepted(
            job_id=job.id, model_name=job.model_name, created_at=job.created_at
        ).model_dump(mode="json")
        if claim is not None:
            await _complete(store, claim, submission.request_hash(), job.id, body)
    except BaseException:
        submission.discard()
        if job is not None:  # only when recording the key failed: take the job back
            await _best_effort(partial(store.cancel, job.id))
        raise
    return Accepted(body)


async def _complete(
    store: JobStore, claim: KeyClaim, request_hash: str, job_id: str, body: dict[str, Any]
) -> None:
    complete = partial(store.complete_idempotent, claim.key, claim.owner, request_hash)
    if not await run_in_threadpool(complete, job_id, body):
        raise IdempotencyInFlightError(
            f"Idempotency-Key {claim.key!r} was taken over by another request while this one"
            " was being accepted; retry later"
        )


async def _best_effort(undo: Callable[[], object]) -> None:
    """Undo a step while an error propagates: even if cancelled, and never masking it."""
    with anyio.CancelScope(shield=True):
        try:
            await run_in_threadpool(undo)
        except Exception:
            log.exception("could not undo: %r", undo)


async def read_submission(request: Request, settings: Settings, job_id: str) -> Submission:
    """Read the body, streaming an uploaded archive to disk under ``job_id``'s name."""
    if require_media_type(request, MULTIPART, JSON) == JSON:
        body = await read_json(request, CONFIG_MAX_BYTES, PayloadTooLargeError)
        if not isinstance(body, dict):
            raise InvalidConfigError("The request body must be a JSON object")
        data_uri = body.pop("data_uri", None)
        return Submission(config=body, data_uri=data_uri)
    # The archive may come with the config and multipart framing: allow for both.
    body_limit = settings.max_upload_bytes + CONFIG_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
    check_declared_length(request, body_limit, UploadTooLargeError)
    held = HeldUploads(settings.uploads_dir(), settings.max_held_upload_bytes)
    await run_in_threadpool(held.admit, declared_length(request))
    upload = FileSink(
        DATASET_FIELD,
        settings.uploads_dir(),
        f"{job_id}.upload",
        settings.max_upload_bytes,
        UploadTooLargeError,
        held,
    )
    try:
        config = await _read_multipart(request, upload)
    except BaseException:
        upload.discard()
        raise
    return Submission(config=config, upload=upload)


async def _read_multipart(request: Request, upload: FileSink) -> dict[str, Any]:
    config = FieldSink(CONFIG_FIELD, CONFIG_MAX_BYTES)

    def open_part(part: PartInfo) -> PartSink:
        if part.name == DATASET_FIELD:
            return upload.open()
        if part.name == CONFIG_FIELD:
            return config.open()
        raise BadRequestError(f"Unexpected form field {part.name!r}")

    await read_multipart(request, open_part)
    if not upload.opened:
        raise BadRequestError(f"Send the dataset archive as form field {DATASET_FIELD!r}")
    return _config_object(config.text())


def _config_object(text: str | None) -> dict[str, Any]:
    if text is None:
        raise InvalidConfigError(f"Send the training config as form field {CONFIG_FIELD!r}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, an int past 4300 digits
        raise InvalidConfigError(f"Form field {CONFIG_FIELD!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidConfigError(f"Form field {CONFIG_FIELD!r} must hold a JSON object")
    return value


async def _vetted_dataset(submission: Submission, settings: Settings) -> Path:
    """The dataset path the job will read: a checked data_uri, or the vetted upload."""
    if submission.upload is None:
        return resolve_data_uri(submission.data_uri, settings)
    await run_in_threadpool(scan_archive, submission.upload.path, settings)
    return submission.upload.commit().absolute()


def resolve_data_uri(value: object, settings: Settings) -> Path:
    """The folder ``value`` names, after symlinks, if it lies inside the data root.

    Relative paths are taken from the data root. The uploads folder is not a dataset.

    Raises:
        InvalidDataUriError: missing, outside the data root, or not a folder.
    """
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidDataUriError("Give data_uri: a dataset folder under the data root")
    root = settings.data_root.resolve()
    try:
        folder = (root / value).resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a name too long, a symlink loop
        raise InvalidDataUriError(f"data_uri {value!r} cannot be resolved: {exc}") from exc
    uploads = settings.uploads_dir().resolve()
    if folder == root or not folder.is_relative_to(root) or folder.is_relative_to(uploads):
        raise InvalidDataUriError(f"data_uri {value!r} is not a folder inside the data root")
    try:
        is_folder = folder.is_dir()
    except OSError as exc:  # a component past NAME_MAX, a path past PATH_MAX
        raise InvalidDataUriError(
            f"data_uri {value[:200]!r} cannot be used: {exc.strerror}"
        ) from exc
    if not is_folder:
        raise InvalidDataUriError(f"data_uri {value!r} is not a folder")
    return folder
