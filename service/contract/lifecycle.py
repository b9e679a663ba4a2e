"""Label moves, rollback and deletes, in the order TensorFlow Serving accepts them.

TF Serving refuses a config whose label names a version that is not loaded yet (the whole
reload fails and the new version is never added). So a label moves in three steps: the
version is served first (``models.config`` lists it, labels unchanged), then the model
server is asked until it reports the version AVAILABLE (END with an error: refused), and
only then is the label written. A delete runs the other way round: the version stops being
served, the model server unloads it, then its folder goes. The API and the worker both move
labels through ``Lifecycle``; with no model server to ask (``status`` None) there is nobody
to wait for and labels are written at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from service.contract.repository import ModelRepository
from service.contract.serving_state import STABLE, ServingState, check_label
from service.errors import (
    LabelInUseError,
    LabelNotFoundError,
    ModelNotFoundError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
    NoPreviousVersionError,
    VersionFailedError,
    VersionLabelledError,
)

AVAILABLE = "AVAILABLE"
END = "END"


class VersionStatusLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def error_code(self) -> int: ...
    @property
    def error_message(self) -> str: ...


class StatusSource(Protocol):
    """What the model server says about a model's versions (``PredictClient`` is one)."""

    async def model_status(
        self, model: str, version: int | None = None, timeout: float | None = None
    ) -> Sequence[VersionStatusLike]: ...

    async def label_version(self, model: str, label: str, timeout: float | None = None) -> int:
        """The version ``label`` resolves to on the model server right now."""
        ...

    async def each_server(self) -> Sequence[StatusSource]:
        """One source per model server behind this one (itself, when there is one)."""
        ...


class Lifecycle:
    """Moves labels and deletes versions of models in ``repository``.

    Args:
        repository: the model repository (and its serving states).
        status: the model server to wait for; None writes labels without waiting.
        timeout: how long a version may take to load (or unload) before 504.
        poll_seconds: how often the model server is asked meanwhile.
    """

    def __init__(
        self,
        repository: ModelRepository,
        status: StatusSource | None,
        timeout: float = 300.0,
        poll_seconds: float = 0.25,
    ) -> None:
        self.repository = repository
        self.status = status
        self.timeout = timeout
        self.poll_seconds = poll_seconds

    async def set_label(self, model: str, label: str, version: int) -> ServingState:
        """Point ``label`` at ``version`` once the model server has loaded it.

        Raises:
            VersionNotFoundError: no such version on disk.
            VersionFailedError: the model server could not load it (label unchanged).
            ModelServerTimeoutError: it did not load in time (label unchanged).
        """
        check_label(label)
        await asyncio.to_thread(self.repository.require_version, model, version)
        await self._serve(model, version)
        state = await self._update(model, lambda state: state.set_label(label, version))
        await self._wait_label(model, label, version)
        return state

    async def roll_back(self, model: str) -> ServingState:
        """Point ``stable`` back at the version it pointed at before.

        Raises:
            NoPreviousVersionError: ``stable`` has no earlier version still on disk.
        """
        state = await asyncio.to_thread(self.repository.serving_state, model)
        on_disk = set(await asyncio.to_thread(self.repository.versions, model))
        earlier = [v for v in state.stable_history if v in on_disk]
        if not earlier:
            raise NoPreviousVersionError(
                f"Model {model!r} has no earlier stable version to roll back to"
            )
        previous = earlier[-1]
        await self._serve(model, previous)
        state = await self._update(model, lambda state: state.roll_back(previous))
        await self._wait_label(model, STABLE, previous)
        return state

    async def drop_label(self, model: str, label: str, force: bool = False) -> ServingState:
        """Remove ``label``; ``stable`` only with ``force`` while other versions exist.

        The versions no label serves any more are unloaded by the model server.
        """
        check_label(label)

        def drop(state: ServingState) -> None:
            if label not in state.labels:
                raise LabelNotFoundError(f"Model {model!r} has no label {label!r}")
            others = set(self.repository.versions(model)) - {state.labels[label]}
            if label == STABLE and others and not force:
                raise LabelInUseError(
                    f"{STABLE!r} answers /predict by default; delete it with ?force=true, or"
                    " move it to another version instead"
                )
            state.drop_label(label)

        return await self._update(model, drop)

    async def delete_version(self, model: str, version: int) -> None:
        """Stop serving ``version``, wait until it is unloaded, then remove it from disk.

        Raises:
            VersionLabelledError: a label points at it (move or delete the label first).
        """
        await asyncio.to_thread(self.repository.require_version, model, version)

        def unserve(state: ServingState) -> None:
            labels = state.labels_of(version)
            if labels:
                raise VersionLabelledError(
                    f"Version {version} of model {model!r} is labelled {', '.join(labels)}:"
                    " move or delete those labels first"
                )
            state.pending.pop(version, None)

        await self._update(model, unserve)
        await self._wait_unloaded(model, version)
        await asyncio.to_thread(self.repository.remove_version, model, version)

    async def delete_model(self, model: str, force: bool = False) -> list[int]:
        """Delete every version of ``model``; with labels only if ``force``. Returns them.

        The version numbers stay used: a later publish under the same name goes on counting.
        """
        versions = await asyncio.to_thread(self.repository.versions, model)
        if not versions:
            raise ModelNotFoundError(f"No model named {model!r} in the model repository")

        def unserve_all(state: ServingState) -> None:
            if state.labels and not force:
                raise LabelInUseError(
                    f"Model {model!r} still has labels ({', '.join(sorted(state.labels))});"
                    " delete it with ?force=true"
                )
            state.labels.clear()
            state.pending.clear()

        await self._update(model, unserve_all)
        for version in versions:
            await self._wait_unloaded(model, version)
            await asyncio.to_thread(self.repository.remove_version, model, version)
        return versions

    async def _serve(self, model: str, version: int) -> None:
        await self._update(model, lambda state: state.serve(version))
        try:
            await self._wait_available(model, version)
        except VersionFailedError:
            # It will never load: stop serving it, so the next config is clean.
            await self._update(model, lambda state: state.pending.pop(version, None))
            raise

    async def _update(self, model: str, change) -> ServingState:
        def apply(state: ServingState) -> ServingState:
            change(state)
            return state

        return await asyncio.to_thread(self.repository.update_state, model, apply)

    async def _poll(self, done: Callable[[], Awaitable[bool]], late: str) -> None:
        """Ask ``done()`` every ``poll_seconds`` until it holds; past the timeout, 504 ``late``."""
        deadline = time.monotonic() + self.timeout
        while not await done():
            if time.monotonic() >= deadline:
                raise ModelServerTimeoutError(late)
            await asyncio.sleep(self.poll_seconds)

    async def _wait_available(self, model: str, version: int) -> None:
        if self.status is None:
            return

        async def loaded(server: StatusSource) -> bool:
            _, status = await self._version_status(server, model, version)
            if status is not None and status.state == END and status.error_code:
                raise VersionFailedError(
                    f"The model server could not load version {version} of model {model!r}:"
                    f" {status.error_message}"
                )
            return status is not None and status.state == AVAILABLE

        late = f"Version {version} of model {model!r} did not load within {self.timeout:g} s;"
        await self._poll(self._on_every_server(loaded), late + " the label was not moved")

    async def _wait_label(self, model: str, label: str, version: int) -> None:
        """Until the model server resolves ``label`` to ``version``: it reads models.config
        by polling, and a move is only done when requests for the label reach the version."""
        if self.status is None:
            return

        async def applied(server: StatusSource) -> bool:
            try:
                return await server.label_version(model, label, timeout=5.0) == version
            except (ModelNotFoundError, ModelServerUnavailableError, ModelServerTimeoutError):
                return False  # not applied yet, or the server is busy: ask again

        await self._poll(
            self._on_every_server(applied),
            f"Label {label!r} of model {model!r} points at version {version} in models.config,"
            f" but the model server did not apply it within {self.timeout:g} s",
        )

    async def _wait_unloaded(self, model: str, version: int) -> None:
        if self.status is None:
            return

        async def unloaded(server: StatusSource) -> bool:
            reachable, status = await self._version_status(server, model, version)
            return reachable and (status is None or status.state == END)

        await self._poll(
            self._on_every_server(unloaded),
            f"Version {version} of model {model!r} was not unloaded within {self.timeout:g} s;"
            " it is no longer served and stays on disk",
        )

    def _on_every_server(
        self, check: Callable[[StatusSource], Awaitable[bool]]
    ) -> Callable[[], Awaitable[bool]]:
        """A poll that holds once ``check`` holds on every model server the target names.

        Predictions take turns over all of them, so a version is loaded, or a label
        applied, only when each has done it. They are asked side by side, the name
        resolved afresh each time (replicas come and go).
        """
        assert self.status is not None
        status = self.status

        async def everywhere() -> bool:
            servers = await status.each_server()
            return all(await asyncio.gather(*(check(server) for server in servers)))

        return everywhere

    async def _version_status(
        self, server: StatusSource, model: str, version: int
    ) -> tuple[bool, VersionStatusLike | None]:
        """(whether the model server answered, the version's status if it knows it)."""
        try:
            found = await server.model_status(model, version, timeout=5.0)
        except ModelNotFoundError:
            return True, None
        except (ModelServerUnavailableError, ModelServerTimeoutError):
            return False, None  # restarting or busy: ask again until the deadline
        return True, next((s for s in found if s.version == version), None)
